// A GRDB app on a DBKey-managed database, as the GRDB integration article describes it: a
// KeyedDatabasePool with reader tasks and a writer task busy the whole time, while the key is
// rotated by the app itself or by an operator's `dbkey rotate --request`. The integration's
// tests kill it at random moments.
//
// Use: dbkey-grdb-example-app DATABASE READERS ROTATIONS
// The local master key comes from the environment, as for dbkey. It answers rotation requests.
// It prints "ready", then "committed N" after each commit and "rotated V" after each rotation,
// and exits 3 when a reader sees an inconsistent snapshot, 1 on any error.
import DBKeyGRDB
import Foundation
import GRDB
import Logging
import SQLCipherKeyManager
import Synchronization

/// Prints a line at once: the parent reads the output of a process it may kill at any moment.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

let arguments = CommandLine.arguments
guard arguments.count == 4, let readerCount = Int(arguments[2]), let rotations = Int(arguments[3]) else {
    FileHandle.standardError.write(Data("usage: dbkey-grdb-example-app DATABASE READERS ROTATIONS\n".utf8))
    exit(64)
}
let logger = Logger(label: "dbkey-grdb-example-app")
do {
    let manager = DatabaseKeyManager(
        databasePath: arguments[1], kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
    let pool = try await KeyedDatabasePool(
        manager: manager, answeringRotationRequests: .milliseconds(50))
    // entry holds 1...n; total holds their sum, updated in the same transaction.
    var migrator = DatabaseMigrator()
    migrator.registerMigration("ledger") { db in
        try db.create(table: "entry") { $0.primaryKey("n", .integer) }
        try db.create(table: "total") { $0.column("sum", .integer).notNull() }
        try db.execute(sql: "INSERT INTO total VALUES (0)")
    }
    try await pool.migrate(migrator)
    let start = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT coalesce(max(n), 0) FROM entry") ?? 0 }
    let stop = Atomic<Bool>(false)
    say("ready")
    let writer = Task {
        var n = start
        while !stop.load(ordering: .relaxed) {
            n += 1
            try await pool.write { [n] db in
                try db.execute(sql: "INSERT INTO entry(n) VALUES (?)", arguments: [n])
                try db.execute(sql: "UPDATE total SET sum = sum + ?", arguments: [n])
            }
            say("committed \(n)")
            // Paced, as an app's writes are.
            try await Task.sleep(for: .milliseconds(1))
        }
        return n
    }
    let readers = (0..<readerCount).map { _ in
        Task {
            while !stop.load(ordering: .relaxed) {
                let (sum, total) = try await pool.read { db in
                    (
                        try Int.fetchOne(db, sql: "SELECT coalesce(sum(n), 0) FROM entry") ?? -1,
                        try Int.fetchOne(db, sql: "SELECT sum FROM total") ?? -2
                    )
                }
                guard sum == total else {
                    FileHandle.standardError.write(Data("inconsistent snapshot: sum \(sum), total \(total)\n".utf8))
                    exit(3)
                }
                try await Task.sleep(for: .milliseconds(1))
            }
        }
    }
    for _ in 0..<rotations {
        try await Task.sleep(for: .milliseconds(50))
        say("rotated \(try await manager.rotateKey().version)")
    }
    stop.store(true, ordering: .relaxed)
    let last = try await writer.value
    for reader in readers {
        try await reader.value
    }
    try await pool.close()
    say("done \(last)")
} catch {
    FileHandle.standardError.write(Data("dbkey-grdb-example-app: \(error)\n".utf8))
    exit(1)
}
