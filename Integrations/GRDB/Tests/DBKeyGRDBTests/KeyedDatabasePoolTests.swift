import DBKeyGRDB
import Foundation
import GRDB
import SQLCipherKeyManager
import Synchronization
import Testing

/// A flag the test's tasks share.
final class StopFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .relaxed) }
    func set() { value.store(true, ordering: .relaxed) }
}

@Suite("GRDB on a DBKey-managed database", .tags(.grdb))
struct KeyedDatabasePoolTests {
    static func migrator() -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("notes") { db in
            try db.create(table: "note") { table in
                table.autoIncrementedPrimaryKey("id")
                table.column("body", .text).notNull()
            }
        }
        migrator.registerMigration("notes.pinned") { db in
            try db.alter(table: "note") { $0.add(column: "pinned", .boolean).notNull().defaults(to: false) }
        }
        return migrator
    }

    @Test(
        "open, migrate, write, close; a second launch reads every row, and the sqlcipher shell opens it with the .key's key"
    )
    func secondLaunch() async throws {
        let workspace = try Workspace()
        let pool = try await KeyedDatabasePool(manager: try workspace.manager())
        try await pool.migrate(Self.migrator())
        try await pool.write { db in
            for index in 0..<100 {
                try db.execute(sql: "INSERT INTO note(body) VALUES (?)", arguments: ["note \(index)"])
            }
        }
        try await pool.close()
        await #expect(throws: DBKeyError.self) { try await pool.read { db in try Int.fetchOne(db, sql: "SELECT 1") } }

        let again = try await KeyedDatabasePool(manager: try workspace.manager())
        try await again.migrate(Self.migrator())
        let (count, columns) = try await again.read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM note"), try db.columns(in: "note").map(\.name))
        }
        #expect(count == 100)
        #expect(columns == ["id", "body", "pinned"])
        try await again.close()
        #expect(try await shellOpens(workspace.database, keyHex: try await workspace.currentKeyHex()))
    }

    @Test("a ValueObservation delivers changes before a rotation and after it, on the new pool")
    func observationAcrossRotation() async throws {
        let workspace = try Workspace()
        let manager = try workspace.manager()
        let pool = try await KeyedDatabasePool(manager: manager)
        try await pool.migrate(Self.migrator())
        let (counts, continuation) = AsyncStream.makeStream(of: Int.self)
        let observation = pool.observe(
            ValueObservation.tracking { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM note") ?? -1 },
            onError: { Issue.record("observation failed: \($0)") },
            onChange: { continuation.yield($0) })
        var seen = counts.makeAsyncIterator()
        /// Waits for the observation to deliver `count`.
        func expectDelivered(_ count: Int) async {
            while let next = await seen.next() {
                if next == count { return }
            }
            Issue.record("the observation ended before delivering \(count)")
        }
        await expectDelivered(0)
        try await pool.write { db in try db.execute(sql: "INSERT INTO note(body) VALUES ('before')") }
        await expectDelivered(1)
        let rotated = try await manager.rotateKey()
        #expect(rotated.version == 2)
        try await pool.write { db in try db.execute(sql: "INSERT INTO note(body) VALUES ('after')") }
        await expectDelivered(2)
        try await pool.write { db in try db.execute(sql: "INSERT INTO note(body) VALUES ('after, again')") }
        await expectDelivered(3)
        observation.cancel()
        continuation.finish()
        try await pool.close()
    }

    @Test(
        "two readers and a writer run across 3 rotations and an operator's dbkey rotate --request: no error, every row, the old key dead"
    )
    func readersAndWriterAcrossRotations() async throws {
        let workspace = try Workspace()
        let manager = try workspace.manager()
        let pool = try await KeyedDatabasePool(manager: manager, answeringRotationRequests: .milliseconds(20))
        try await pool.write { db in
            try db.execute(sql: "CREATE TABLE entry(n INTEGER PRIMARY KEY); CREATE TABLE total(sum INTEGER NOT NULL)")
            try db.execute(sql: "INSERT INTO total VALUES (0)")
        }
        let firstKey = try await workspace.currentKeyHex()
        let stop = StopFlag()
        let writer = Task {
            var n = 0
            while !stop.isSet {
                n += 1
                try await pool.write { [n] db in
                    try db.execute(sql: "INSERT INTO entry(n) VALUES (?)", arguments: [n])
                    try db.execute(sql: "UPDATE total SET sum = sum + ?", arguments: [n])
                }
                await Task.yield()
            }
            return n
        }
        let readers = (0..<2).map { _ in
            Task {
                var reads = 0
                while !stop.isSet {
                    let (sum, total) = try await pool.read { db in
                        (
                            try Int.fetchOne(db, sql: "SELECT coalesce(sum(n), 0) FROM entry"),
                            try Int.fetchOne(db, sql: "SELECT sum FROM total")
                        )
                    }
                    #expect(sum == total, "an inconsistent snapshot")
                    reads += 1
                    await Task.yield()
                }
                return reads
            }
        }
        for version in 2...4 {
            #expect(try await manager.rotateKey().version == version)
        }
        let requested = try await run(
            Built.dbkey, ["rotate", workspace.database, "--request", "--wait", "30"], environment: workspace.environment
        )
        #expect(requested.status == 0, "\(requested.stderr)")
        #expect(requested.stdout.contains("version 5"), "\(requested.stdout)")
        stop.set()
        let committed = try await writer.value
        for reader in readers {
            #expect(try await reader.value > 0)
        }
        let (count, sum) = try await pool.read { db in
            (
                try Int.fetchOne(db, sql: "SELECT count(*) FROM entry"),
                try Int.fetchOne(db, sql: "SELECT sum FROM total")
            )
        }
        #expect(count == committed && sum == committed * (committed + 1) / 2)
        try await pool.close()
        #expect(try manager.load().version == 5)
        #expect(try await shellOpens(workspace.database, keyHex: try await workspace.currentKeyHex()))
        #expect(try await !shellOpens(workspace.database, keyHex: firstKey), "the first key still opens the database")
    }

    @Test(
        "a GRDB read started while a rotation's copy is made finishes before the copy is journaled, on the old file; a write then waits for the new pool"
    )
    func readsGoOnDuringTheCopy() async throws {
        let workspace = try Workspace()
        let manager = try workspace.manager()
        let pool = try await KeyedDatabasePool(manager: manager)
        try await pool.migrate(Self.migrator())
        try await pool.write { db in
            for index in 0..<2_000 {
                try db.execute(sql: "INSERT INTO note(body) VALUES (?)", arguments: ["note \(index)"])
            }
        }
        /// The read and the write started at the copy's first progress report, each with the
        /// `.key`'s version (and whether a change was journaled) when it finished.
        typealias ReadTask = Task<(Int?, Int, Bool), any Error>
        let started = Mutex<(read: ReadTask?, write: Task<(Int, Bool), any Error>?)>((nil, nil))
        let keyFile = workspace.database + ".key"
        @Sendable func keyState() -> (Int, Bool) {
            let text = (try? String(contentsOfFile: keyFile, encoding: .utf8)) ?? ""
            let version = text.range(of: #""version"\s*:\s*(\d+)"#, options: .regularExpression).flatMap {
                Int(text[$0].split(separator: ":").last!.trimmingCharacters(in: .whitespaces))
            }
            return (version ?? -1, text.range(of: #""pending"\s*:\s*\{"#, options: .regularExpression) != nil)
        }
        let rotated = try await manager.rotateKey(progress: { report in
            guard report.phase == .rekeying else { return }
            started.withLock { started in
                guard started.read == nil else { return }
                started.read = Task {
                    let count = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM note") }
                    let (version, pending) = keyState()
                    return (count, version, pending)
                }
                started.write = Task {
                    try await pool.write { db in try db.execute(sql: "INSERT INTO note(body) VALUES ('during')") }
                    return keyState()
                }
            }
        })
        #expect(rotated.version == 2)
        let (read, write) = started.withLock { ($0.read, $0.write) }
        let (count, versionAtRead, journaledAtRead) = try #require(try await read?.value)
        #expect(count == 2_000)
        #expect(versionAtRead == 1 && !journaledAtRead, "the read waited for the rotation")
        let (versionAtWrite, _) = try #require(try await write?.value)
        #expect(versionAtWrite == 2, "the write ran before the rotation ended")
        #expect(try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM note") } == 2_001)
        try await pool.close()
    }

    @Test(
        "a key changed through GRDB's changePassphrase behind the journal is reported when the pool closes and at the next open"
    )
    func changePassphraseIsReported() async throws {
        let workspace = try Workspace()
        let manager = try workspace.manager()
        let pool = try await KeyedDatabasePool(manager: manager)
        try await pool.write { db in try db.execute(sql: "CREATE TABLE t(x); INSERT INTO t VALUES (1)") }
        try await pool.barrierWriteWithoutTransaction { db in try db.changePassphrase("chosen by the app") }
        await #expect {
            try await pool.close()
        } throws: { error in
            (error as? DBKeyError)?.code == .wrongKey
                && (error as? DBKeyError)?.message.contains("changed outside DBKey") == true
        }
        await #expect {
            _ = try await KeyedDatabasePool(manager: try workspace.manager())
        } throws: { error in
            (error as? DBKeyError)?.code == .wrongKey
        }
    }

    @Test(
        "slot changes while GRDB work runs: an escrow slot added, then removed with a rotation that replaces the pool")
    func slotChangesUnderLoad() async throws {
        let workspace = try Workspace()
        let manager = try workspace.manager()
        let pool = try await KeyedDatabasePool(manager: manager)
        try await pool.write { db in try db.execute(sql: "CREATE TABLE t(n INTEGER)") }
        let stop = StopFlag()
        let writer = Task {
            var n = 0
            while !stop.isSet {
                n += 1
                try await pool.write { [n] db in try db.execute(sql: "INSERT INTO t VALUES (?)", arguments: [n]) }
                await Task.yield()
            }
            return n
        }
        let escrow = try EscrowPrivateKey.generate()
        #expect(try await manager.addEscrowSlot(escrow.publicKey).slots.count == 1)
        let rotated = try await manager.removeSlot(1, rotate: true)
        #expect(rotated.slots.isEmpty && rotated.version == 2)
        stop.set()
        let written = try await writer.value
        #expect(try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM t") } == written)
        try await pool.close()
    }

    @Test("a database a GRDB app keyed with usePassphrase is adopted once, with every row")
    func adoptPassphraseDatabase() async throws {
        let workspace = try Workspace()
        var configuration = Configuration()
        configuration.prepareDatabase { db in try db.usePassphrase("the app's old passphrase") }
        let old = try DatabasePool(path: workspace.database, configuration: configuration)
        try await old.write { db in
            try db.execute(sql: "CREATE TABLE note(body TEXT)")
            for index in 0..<500 {
                try db.execute(sql: "INSERT INTO note VALUES (?)", arguments: ["note \(index)"])
            }
        }
        try old.close()

        // At launch, once: a database with no .key yet is brought under management.
        let manager = try workspace.manager()
        if !FileManager.default.fileExists(atPath: KeyFile.path(forDatabase: manager.databasePath)) {
            let passphrase = Array("the app's old passphrase".utf8).withUnsafeBytes { SecureBuffer(copying: $0) }
            _ = try await manager.migrate(from: .passphrase(passphrase, PassphraseCipherSettings()))
        }
        let pool = try await KeyedDatabasePool(manager: manager)
        #expect(try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM note") } == 500)
        try await pool.close()
        // The passphrase no longer opens it.
        #expect(throws: (any Error).self) {
            let stale = try DatabaseQueue(path: workspace.database, configuration: configuration)
            _ = try stale.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM note") }
        }
    }

    @Test("the test binary links one SQLite library, SQLCipher, and the process loaded no other")
    func oneSQLite() async throws {
        let binary = Built.directory.appendingPathComponent("DBKeyGRDBPackageTests.xctest").path
        let result = try await run("/usr/bin/ldd", [binary], environment: ProcessInfo.processInfo.environment)
        #expect(result.status == 0, "\(result.stderr)")
        let linked = result.stdout.split(separator: "\n").filter {
            $0.contains("libsqlite") || $0.contains("libsqlcipher")
        }
        #expect(linked.count == 1 && linked.first?.contains("libsqlcipher") == true, "\(linked)")
        // GRDB has run in this process by now (or runs here): its SQLite is the one mapped.
        _ = try await DatabaseQueue().read { db in try String.fetchOne(db, sql: "PRAGMA cipher_version") }
        // Read to its end: procfs files report a size of 0.
        let maps = String(
            decoding: try #require(FileHandle(forReadingAtPath: "/proc/self/maps")).readDataToEndOfFile(), as: UTF8.self
        )
        let mapped = Set(
            maps.split(separator: "\n").compactMap { $0.split(separator: " ").last.map(String.init) }
                .filter { $0.contains("libsqlite") || $0.contains("libsqlcipher") })
        #expect(mapped.count == 1 && mapped.first?.contains("libsqlcipher") == true, "\(mapped)")
        let version = try await DatabaseQueue().read { db in try String.fetchOne(db, sql: "PRAGMA cipher_version") }
        #expect(version?.hasPrefix("4.") == true, "GRDB's connections are not SQLCipher 4: \(version ?? "none")")
    }
}
