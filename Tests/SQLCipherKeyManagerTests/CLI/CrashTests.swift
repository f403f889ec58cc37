import Foundation
import Testing

@testable import SQLCipherKeyManager

/// Real processes, really killed: `dbkey rotate` and `dbkey migrate` sent SIGKILL at random
/// moments, and other processes holding or rotating the same database.
@Suite("Crashes and concurrent processes", .tags(.engine, .cli))
struct CrashTests {
    static let kills = 20
    /// 20,000 rows of 1000 characters, a database of about 21 MB: a rotation long enough that
    /// most kills land in it, at every step. A soak's 50,000 rows make about 52 MB.
    static let rows = TestScale.choose(20_000, soak: 50_000)

    var environment: [String: String] {
        [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable: allowSQLCipher3Databases,
            LocalKms.masterKeyVariable: testMasterKeyBase64,
        ]
    }

    func start(_ arguments: [String], environment extra: [String: String] = [:]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DBKeyCLITests.executable)
        process.arguments = arguments
        process.environment = environment.merging(extra) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Runs `arguments` and kills the process with SIGKILL after `delay`. Returns whether the
    /// kill landed before the process finished by itself, and how long it ran.
    func runAndKill(_ arguments: [String], after delay: Duration, environment: [String: String] = [:]) async throws
        -> (interrupted: Bool, ran: Duration)
    {
        let clock = ContinuousClock()
        let began = clock.now
        let process = try start(arguments, environment: environment)
        // Poll rather than sleep through: a process that finishes early tells how long a whole
        // run takes now, whatever the load on the machine.
        while process.isRunning && clock.now - began < delay {
            try await Task.sleep(for: .milliseconds(2))
        }
        let ran = clock.now - began
        kill(process.processIdentifier, SIGKILL)
        try await offPool { process.waitUntilExit() }
        return (process.terminationReason == .uncaughtSignal, ran)
    }

    /// Fills `item` with `rows` rows of 1000 characters, and closes the connection.
    func fillItems(_ connection: UncheckedConnection) async throws {
        try await offPool {
            let db = connection.connection
            defer { db.close() }
            try db.execute("CREATE TABLE item(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
            let insert = try db.prepare("INSERT INTO item(id, body) VALUES (?, printf('%01000d', ?))")
            try db.inTransaction {
                for row in 1...Self.rows {
                    try insert.execute(arguments: [.integer(Int64(row)), .integer(Int64(row))])
                }
            }
        }
    }

    /// Checks, and closes, a connection to a database ``fillItems(_:)`` filled: a clean
    /// integrity check and every row, whole.
    func expectEveryItem(_ connection: UncheckedConnection) async throws {
        let (problems, summary) = try await offPool {
            defer { connection.connection.close() }
            return (
                try connection.connection.integrityCheck(),
                try connection.connection.fetchAll("SELECT count(*), sum(id), sum(length(body)) FROM item").first?
                    .values
            )
        }
        #expect(problems == [])
        #expect(
            summary == [
                .integer(Int64(Self.rows)), .integer(Int64(Self.rows * (Self.rows + 1) / 2)),
                .integer(Int64(Self.rows * 1000)),
            ])
    }

    /// Whether a kill test goes on: `kills` kills at least, and more (up to three times as
    /// many) until half of them landed mid-operation. On a loaded machine a kill may come late,
    /// after a run that finished by itself: the test then kills again rather than fail.
    static func killsToGo(made: Int, interrupted: Int) -> Bool {
        made < kills || (interrupted < kills / 2 && made < kills * 3)
    }

    func timed(_ arguments: [String], environment: [String: String] = [:]) async throws -> Duration {
        let clock = ContinuousClock()
        let began = clock.now
        let process = try start(arguments, environment: environment)
        try await offPool { process.waitUntilExit() }
        #expect(process.terminationStatus == 0, "\(arguments) failed")
        return clock.now - began
    }

    @Test(
        "SIGKILL at random moments during rotate, by copy and in place, rollback and WAL: every row survives, integrity ok",
        arguments: [false, true], [false, true])
    func killedRotations(wal: Bool, inPlace: Bool) async throws {
        let database = try await TestDatabase(rows: Self.rows, wal: wal)
        #expect(try contents(database.path).count >= Self.rows * 1000)
        let arguments = ["rotate"] + (inPlace ? ["--in-place"] : []) + [database.path]
        var duration = try await timed(arguments)
        var interrupted = 0
        var pendingFound = 0
        var version = try database.manager().load().version
        var made = 0
        while Self.killsToGo(made: made, interrupted: interrupted) {
            made += 1
            let outcome = try await runAndKill(arguments, after: duration * Double.random(in: 0...1.1))
            if outcome.interrupted {
                interrupted += 1
            } else {
                duration = outcome.ran
            }
            // What needs recovery: a journaled rotation, or (by copy) a copy being written.
            if try KeyFile.read(from: database.path + ".key").pending != nil
                || FileManager.default.fileExists(atPath: database.path + ".dbkey-rotating")
            {
                pendingFound += 1
            }
            try await database.expectIntact()
            let now = try database.manager().load().version
            #expect(now == version || now == version + 1, "a rotation either happened once or not at all")
            version = now
        }
        print(
            "kill test (rotate\(inPlace ? " --in-place" : ""), \(wal ? "WAL" : "rollback"), \(Self.rows) rows, one rotation \(duration)): \(interrupted) of \(made) kills landed mid-rotation, \(pendingFound) left a journaled rotation or a copy; every open recovered all rows"
        )
        // The test only means something if kills landed mid-rotation.
        #expect(interrupted >= Self.kills / 2, "only \(interrupted) of \(made) kills interrupted a rotation")
        #expect(pendingFound >= 3, "only \(pendingFound) kills left a journaled rotation or a copy to recover")
    }

    @Test(
        "SIGKILL at random moments during rotate with three slots (local, a second master key, escrow): each slot alone opens every row"
    )
    func killedRotationsWithSlots() async throws {
        let directory = try TemporaryDirectory()
        let first = secureBuffer(hex: (0..<32).map { String(format: "%02x", $0) }.joined())
        let second = try SecureBuffer.random(count: 32)
        let secondPath = directory.file("second.key")
        #expect(
            FileManager.default.createFile(
                atPath: secondPath, contents: second.withUnsafeBytes { Data(Data($0).base64EncodedString().utf8) },
                attributes: [.posixPermissions: 0o600]))
        let escrow = try EscrowPrivateKey.generate()
        let target = directory.file("app.db")
        let manager = DatabaseKeyManager(
            databasePath: target, kms: try LocalKms(masterKey: first, otherMasterKeys: [second]), logger: silentLogger)
        try await manager.initialize()
        try await fillItems(UncheckedConnection(try await manager.open()))
        try await manager.addSlot(try LocalKms(masterKey: second), kekId: LocalKms.defaultKekName)
        try await manager.addEscrowSlot(escrow.publicKey)
        let both = [LocalKms.otherMasterKeyFilesVariable: secondPath]
        // Each slot alone: the primary's master key, the second one through slot 1, the escrow key.
        let openers: [(String, @Sendable (String) throws -> DatabaseKeyManager)] = [
            (
                "primary",
                { DatabaseKeyManager(databasePath: $0, kms: try LocalKms(masterKey: first), logger: silentLogger) }
            ),
            (
                "slot 1",
                {
                    DatabaseKeyManager(databasePath: $0, kms: try LocalKms(masterKey: second), logger: silentLogger)
                        .restricted(to: .slot(1))
                }
            ),
            (
                "escrow",
                {
                    DatabaseKeyManager(databasePath: $0, kms: try LocalKms(masterKey: second), logger: silentLogger)
                        .restricted(to: .escrow(escrow))
                }
            ),
        ]
        var duration = try await timed(["rotate", target], environment: both)
        var interrupted = 0
        var pendingFound = 0
        var made = 0
        while Self.killsToGo(made: made, interrupted: interrupted) {
            made += 1
            let outcome = try await runAndKill(
                ["rotate", target], after: duration * Double.random(in: 0...1.1), environment: both)
            if outcome.interrupted {
                interrupted += 1
            } else {
                duration = outcome.ran
            }
            let pending = try KeyFile.read(from: target + ".key").pending
            if pending != nil || FileManager.default.fileExists(atPath: target + ".dbkey-rotating") {
                pendingFound += 1
            }
            if pending != nil {
                #expect(pending?.slots.count == 2, "the pending record carries the new key under both slots")
            }
            for (name, opener) in openers {
                // A copy of exactly what the kill left, journal included.
                let copy = directory.file("\(name.replacingOccurrences(of: " ", with: "-")).db")
                for suffix in ["", "-journal", ".key", ".key.lock"] {
                    try? FileManager.default.removeItem(atPath: copy + suffix)
                    if FileManager.default.fileExists(atPath: target + suffix) {
                        try FileManager.default.copyItem(atPath: target + suffix, toPath: copy + suffix)
                    }
                }
                let connection = UncheckedConnection(try await opener(copy).open())
                try await expectEveryItem(connection)
                #expect(try KeyFile.read(from: copy + ".key").pending == nil, "\(name) settled the copy")
            }
        }
        print(
            "kill test (rotate with 3 slots, \(Self.rows) rows, one rotation \(duration)): \(interrupted) of \(made) kills landed mid-rotation, \(pendingFound) left a journaled rotation or a copy; the primary, slot 1 and the escrow key each opened every row of every outcome"
        )
        #expect(interrupted >= Self.kills / 2, "only \(interrupted) of \(made) kills interrupted a rotation")
        #expect(pendingFound >= 3, "only \(pendingFound) kills left a journaled rotation or a copy to recover")
    }

    @Test("SIGKILL at random moments during migrate: the plaintext original or the encrypted database, each complete")
    func killedMigrations() async throws {
        let directory = try TemporaryDirectory()
        let pristine = directory.file("pristine.db")
        let plaintext = UncheckedConnection(
            try DatabaseConnection.open(path: pristine, keying: .plaintext, create: true))
        try await fillItems(plaintext)
        let target = directory.file("app.db")
        try FileManager.default.copyItem(atPath: pristine, toPath: target)
        var duration = try await timed(["migrate", target, "--from-plaintext"])
        var outcomes: [String: Int] = [:]
        for _ in 0..<Self.kills {
            for suffix in ["", ".key", ".key.lock", ".dbkey-migrating", "-journal"] {
                try? FileManager.default.removeItem(atPath: target + suffix)
            }
            try FileManager.default.copyItem(atPath: pristine, toPath: target)
            let outcome = try await runAndKill(
                ["migrate", target, "--from-plaintext"], after: duration * Double.random(in: 0...1.2))
            if !outcome.interrupted {
                duration = outcome.ran
            }
            let connection: UncheckedConnection
            if FileManager.default.fileExists(atPath: target + ".key") {
                let pending = try KeyFile.read(from: target + ".key").pending != nil
                outcomes[pending ? "encrypted, swap pending" : "encrypted", default: 0] += 1
                connection = UncheckedConnection(
                    try await DatabaseKeyManager(databasePath: target, kms: try localKms(), logger: silentLogger).open()
                )
            } else {
                outcomes["plaintext", default: 0] += 1
                connection = UncheckedConnection(try DatabaseConnection.open(path: target, keying: .plaintext))
            }
            try await expectEveryItem(connection)
        }
        print("kill test (migrate, \(Self.rows) rows, one migration \(duration)): outcomes \(outcomes)")
        #expect(outcomes["plaintext", default: 0] >= 3, "\(outcomes)")
        #expect(outcomes.values.reduce(0, +) == Self.kills)
    }

    @Test(
        "SIGKILL at random moments during upgrade: the 3-format or the 4-format database, each complete",
        .enabled(if: ((try? SQLCipherEngine.linked().majorVersion) ?? 0) >= 4))
    func killedUpgrades() async throws {
        let directory = try TemporaryDirectory()
        let pristine = directory.file("pristine.db")
        try await makeFormat3Database(path: pristine, kms: try localKms(), kekId: LocalKms.defaultKekName)
        let filler = try await DatabaseKeyManager(databasePath: pristine, kms: try localKms(), logger: silentLogger)
            .open()
        try await fillItems(UncheckedConnection(filler))
        let target = directory.file("app.db")
        func restore() throws {
            for suffix in ["", ".key", ".key.lock", ".dbkey-migrating", "-journal"] {
                try? FileManager.default.removeItem(atPath: target + suffix)
            }
            try FileManager.default.copyItem(atPath: pristine, toPath: target)
            try FileManager.default.copyItem(atPath: pristine + ".key", toPath: target + ".key")
        }
        try restore()
        var duration = try await timed(["upgrade", target])
        var outcomes: [String: Int] = [:]
        for _ in 0..<Self.kills {
            try restore()
            let outcome = try await runAndKill(["upgrade", target], after: duration * Double.random(in: 0...1.2))
            if !outcome.interrupted {
                duration = outcome.ran
            }
            let journaled = try KeyFile.read(from: target + ".key").pending != nil
            let manager = DatabaseKeyManager(databasePath: target, kms: try localKms(), logger: silentLogger)
            let connection = UncheckedConnection(try await manager.open())
            let format = try manager.load().cipher.format
            outcomes["format \(format)\(journaled ? ", journaled" : "")", default: 0] += 1
            try await expectEveryItem(connection)
            #expect(!FileManager.default.fileExists(atPath: target + ".dbkey-migrating"))
        }
        print("kill test (upgrade, \(Self.rows) rows, one upgrade \(duration)): outcomes \(outcomes)")
        #expect(outcomes["format 3", default: 0] >= 3, "\(outcomes)")
        #expect(outcomes.values.reduce(0, +) == Self.kills)
    }

    @Test("an app's process holding the database makes a rotation wait, and both finish correctly")
    func holdingProcess() async throws {
        let database = try await TestDatabase(rows: 1000)
        // The example app holds the database (its pool's shared lock) with a reader and a
        // writer busy until a file appears: the test, not a clock, decides when it lets go,
        // however slowly a loaded machine runs either side.
        let output = database.directory.file("app.out")
        let stop = database.directory.file("stop")
        let app = try ExampleApp.start(
            [database.path, "--readers", "1", "--until", stop], output: output, environment: environment)
        try await ExampleApp.waitFor("ready", in: output, from: app)
        #expect(DatabaseLock.isHeld(databasePath: database.path), "the app holds its lock")
        await expectError(.databaseInUse) { try await database.manager().rotateKey() }
        let rotation = Task { try await database.manager().rotateKey(wait: .seconds(120)) }
        #expect(app.isRunning, "the app still holds the database while the rotation waits")
        _ = FileManager.default.createFile(atPath: stop, contents: nil)
        let rotated = try await rotation.value
        try await offPool { app.waitUntilExit() }
        let tail = try ExampleApp.lines(output).suffix(3)
        #expect(app.terminationStatus == 0, "the app failed: \(tail)")
        #expect(rotated.version == 2)
        try await database.expectIntact()
        _ = try await ExampleApp.expectLedger(database.manager(), committed: try ExampleApp.lastCommitted(output))
    }

    @Test("two processes rotating at once: exactly one runs, the other exits 30 (database in use)")
    func twoRotatingProcesses() async throws {
        // Large enough that the first rekey outlasts DatabaseLock.minimumWait several times; in
        // place, whose journaled window is the whole rekey (a rotation by copy journals only
        // once its copy is made).
        let database = try await TestDatabase(rows: 60_000)
        let first = try start(["rotate", "--in-place", database.path])
        // Start the second once the first has journaled its rotation, so they overlap for sure.
        var journaled = false
        while !journaled && first.isRunning {
            journaled = (try? KeyFile.read(from: database.path + ".key").pending) != nil
            if !journaled { try await Task.sleep(for: .milliseconds(2)) }
        }
        try #require(journaled, "the first rotation finished before it could be observed")
        // Held in its journaled window (and so holding the lock) until the second has been
        // answered: on a busy machine the second could otherwise start after the first ended.
        kill(first.processIdentifier, SIGSTOP)
        try #require(
            (try? KeyFile.read(from: database.path + ".key").pending) != nil,
            "the first rotation finished before it could be held")
        let second = try start(["rotate", database.path])
        try await offPool { second.waitUntilExit() }
        kill(first.processIdentifier, SIGCONT)
        try await offPool { first.waitUntilExit() }
        #expect(first.terminationStatus == 0)
        #expect(second.terminationStatus == 30)
        #expect(try database.manager().load().version == 2)
        try await database.expectIntact()
    }
}
