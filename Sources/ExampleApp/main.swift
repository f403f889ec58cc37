// A running app, as the article "Using DBKey in a Running App" describes it: a connection
// pool with reader tasks and a writer task busy the whole time, while the key is rotated —
// by the app itself (--rotations) or by an operator's `dbkey rotate --request`
// (--answer-requests). The crash tests kill it at random moments.
//
// Use: dbkey-example-app DB [--readers N] [--rotations N] [--answer-requests] [--seconds S]
//      [--until FILE]
// It stops after S seconds, or once FILE exists (a test's event, not a clock). The local master key comes from the environment, as for dbkey. It prints "ready", then
// "committed N" after each commit and "rotated V" after each rotation, and exits 3 when a
// reader sees an inconsistent snapshot, 2 on any error.
import Foundation
import Logging
import SQLCipherKeyManager
import Synchronization

struct Options {
    var database = ""
    var readers = 4
    var rotations = 0
    var answerRequests = false
    var seconds: Double?
    var until: String?

    init(_ arguments: [String]) {
        var remaining = arguments[...]
        while let argument = remaining.popFirst() {
            switch argument {
            case "--readers": readers = Int(remaining.popFirst() ?? "") ?? readers
            case "--rotations": rotations = Int(remaining.popFirst() ?? "") ?? rotations
            case "--answer-requests": answerRequests = true
            case "--seconds": seconds = Double(remaining.popFirst() ?? "")
            case "--until": until = remaining.popFirst()
            default: database = argument
            }
        }
    }
}

/// Prints a line at once: the parent reads the output of a process it may kill at any moment.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ error: any Error, status: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("dbkey-example-app: \(error)\n".utf8))
    exit(status)
}

let options = Options(Array(CommandLine.arguments.dropFirst()))
let logger = Logger(label: "dbkey-example-app")
do {
    let manager = DatabaseKeyManager(
        databasePath: options.database, kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
    let pool = try await manager.openPool(
        maximumReaders: options.readers, answeringRotationRequests: options.answerRequests ? .milliseconds(50) : nil)
    // entry holds 1...n; total holds their sum, updated in the same transaction.
    let start = try await pool.write { db in
        try db.execute(
            "CREATE TABLE IF NOT EXISTS entry(n INTEGER PRIMARY KEY); CREATE TABLE IF NOT EXISTS total(sum INTEGER NOT NULL)"
        )
        if try db.fetchAll("SELECT count(*) FROM total")[0][0] == .integer(0) {
            try db.execute("INSERT INTO total VALUES (0)")
        }
        return try db.fetchAll("SELECT coalesce(max(n), 0) FROM entry")[0][0].integerValue ?? 0
    }
    let stop = Atomic<Bool>(false)
    say("ready")
    let writer = Task {
        var n = start
        while !stop.load(ordering: .relaxed) {
            n += 1
            try await pool.write { [n] db in
                try db.execute("INSERT INTO entry(n) VALUES (?)", arguments: [.integer(n)])
                try db.execute("UPDATE total SET sum = sum + ?", arguments: [.integer(n)])
            }
            say("committed \(n)")
            // Paced, as an app's writes are.
            try await Task.sleep(for: .milliseconds(1))
        }
        return n
    }
    let readers = (0..<options.readers).map { _ in
        Task {
            while !stop.load(ordering: .relaxed) {
                let (sum, total) = try await pool.read { db in
                    (
                        try db.fetchAll("SELECT coalesce(sum(n), 0) FROM entry")[0][0],
                        try db.fetchAll("SELECT sum FROM total")[0][0]
                    )
                }
                guard sum == total else {
                    fail(DBKeyError(.sqlite, "inconsistent snapshot: sum \(sum), total \(total)"), status: 3)
                }
                try await Task.sleep(for: .milliseconds(1))
            }
        }
    }
    for _ in 0..<options.rotations {
        try await Task.sleep(for: .milliseconds(50))
        say("rotated \(try await manager.rotateKey().version)")
    }
    if let seconds = options.seconds {
        try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
    }
    if let until = options.until {
        while access(until, F_OK) != 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
    }
    stop.store(true, ordering: .relaxed)
    let last = try await writer.value
    for reader in readers {
        try await reader.value
    }
    await pool.close()
    say("done \(last)")
} catch {
    fail(error)
}
