import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// `backup` and `restore`, in the library and as processes.
@Suite("Backups", .tags(.engine, .core))
struct BackupTests {
    typealias Workspace = DBKeyCLITests.Workspace

    @Test(
        "a backup taken while a writer process inserts restores with a clean integrity check and a count the writer committed"
    )
    func backupWhileWriting() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        #expect(
            try await workspace.dbkey("sql", database, "PRAGMA journal_mode = WAL; CREATE TABLE t(x INTEGER NOT NULL)")
                .status == 0)
        // The writer: one dbkey process per insert, each committing the next number, until the
        // stop file appears (made once the backup is done; in a soak, all 400).
        let stop = workspace.directory.file("stop-writing")
        let shell = try requireTool("sh", installedBy: "dash")
        let writer = Process()
        writer.executableURL = URL(fileURLWithPath: shell)
        writer.arguments = [
            "-c",
            "i=1; while [ $i -le 400 ] && [ ! -e \"$2\" ]; do \"$0\" sql \"$1\" \"INSERT INTO t VALUES ($i)\" || exit 1; i=$((i+1)); done",
            DBKeyCLITests.executable, database, stop,
        ]
        writer.environment = workspace.environment
        try writer.run()
        let manager = DatabaseKeyManager(
            databasePath: database, kms: try localKms(), configuration: .init(keyCacheTTL: .zero), logger: silentLogger)
        var before: Int64 = 0
        let deadline = ContinuousClock.now + .seconds(60)
        while before < 20 && writer.isRunning && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
            before = try await manager.rowCount(of: "t") ?? 0
        }
        try #require(before >= 20 && writer.isRunning, "the writer committed \(before) rows and stopped or stalled")
        let backup = workspace.directory.file("backup.db")
        let made = try await workspace.dbkey("backup", database, backup)
        #expect(made.status == 0, "\(made.stderr)")
        #expect(writer.isRunning, "the writer finished before the backup did: nothing was tested")
        if !TestScale.soak {
            #expect(FileManager.default.createFile(atPath: stop, contents: Data()))
        }
        try await offPool { writer.waitUntilExit() }
        #expect(writer.terminationStatus == 0, "a write failed while the backup ran")

        let restored = workspace.directory.file("restored.db")
        let placed = try await workspace.dbkey("restore", backup, restored)
        #expect(placed.status == 0, "\(placed.stderr)")
        #expect(try await workspace.dbkey("verify", restored).status == 0)
        let result = try await workspace.dbkey("sql", restored, "SELECT count(*), max(x) FROM t")
        let fields = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: "\t").compactMap {
            Int64($0)
        }
        // Each insert commits the next number: a snapshot holds exactly 1...n.
        #expect(
            fields.count == 2 && fields[0] == fields[1] && fields[0] >= before && fields[0] < 400, "\(result.stdout)")
    }

    @Test("--new-dek: the backup does not open with the live key; restored, it opens with its own")
    func newDataKey() async throws {
        let database = try await TestDatabase(rows: 40)
        let backup = database.directory.file("backup.db")
        let liveKey = try await database.currentKey()
        let keyFile = try await database.manager().backup(to: backup, newDataKey: true)
        let liveCheck = try database.manager().load().keyCheck
        #expect(keyFile.version == 1 && keyFile.keyCheck != liveCheck)
        #expect(try await !sqlcipherShellOpensDatabase(backup, key: liveKey, cipher: keyFile.cipher))
        let restored = database.directory.file("restored.db")
        let manager = DatabaseKeyManager(databasePath: restored, kms: try localKms(), logger: silentLogger)
        try await manager.restore(from: backup)
        try await TestDatabase.expectItems(manager, rows: 40)
    }

    @Test("a backup sealed to an escrow key restores with the private key, re-homed under a new master key")
    func escrowBackup() async throws {
        let database = try await TestDatabase(rows: 30)
        let escrow = try EscrowPrivateKey.generate()
        let backup = database.directory.file("backup.db")
        let keyFile = try await database.manager().backup(to: backup, protection: .escrow(escrow.publicKey))
        #expect(keyFile.slots.count == 1 && keyFile.slots[0].isEscrow)
        // A new device: a master key that never wrapped this database.
        let newMaster = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
        let restored = database.directory.file("restored.db")
        let manager = DatabaseKeyManager(databasePath: restored, kms: newMaster, logger: silentLogger)
        await expectError(.kmsKeyNotFound) { try await manager.restore(from: backup) }
        #expect(!FileManager.default.fileExists(atPath: restored))
        try await manager.restore(from: backup, through: .escrow(escrow), rewrapTo: newMaster, kekId: "default")
        try await TestDatabase.expectItems(manager, rows: 30)
        #expect(try manager.load().kekId == newMaster.kekId)
    }

    @Test("restore never overwrites a database or a .key, and changes neither")
    func restoreRefusesToOverwrite() async throws {
        let database = try await TestDatabase(rows: 10)
        let backup = database.directory.file("backup.db")
        try await database.manager().backup(to: backup)
        let other = try await TestDatabase(rows: 5)
        for victim in [other.path, other.path + ".key"] {
            let before = try contents(victim)
            let manager = DatabaseKeyManager(databasePath: other.path, kms: try localKms(), logger: silentLogger)
            await expectError(.alreadyInitialized) { try await manager.restore(from: backup) }
            #expect(try contents(victim) == before)
        }
        // And a backup never replaces anything either.
        let keyBefore = try contents(other.path + ".key")
        await expectError(.alreadyInitialized) { try await database.manager().backup(to: other.path) }
        #expect(try contents(other.path + ".key") == keyBefore)
    }

    @Test(
        "restore refuses a damaged backup, a .key of another database, a missing .key, and a live .key with a change pending; nothing is left at the destination"
    )
    func restoreRefusals() async throws {
        let database = try await TestDatabase(rows: 300)
        let backup = database.directory.file("backup.db")
        try await database.manager().backup(to: backup)
        let original = try contents(backup)
        #expect(original.count >= 4096 * 6)
        let restored = database.directory.file("restored.db")
        let manager = DatabaseKeyManager(databasePath: restored, kms: try localKms(), logger: silentLogger)
        func expectNothingRestored(sourceLocation: SourceLocation = #_sourceLocation) throws {
            let names = try FileManager.default.contentsOfDirectory(atPath: database.directory.path)
            #expect(
                !names.contains { $0.hasPrefix("restored.db") }, "left behind: \(names)", sourceLocation: sourceLocation
            )
        }

        // A damaged later page: the key opens the backup, its integrity check fails.
        var laterPage = original
        for offset in (4096 * 4 + 200)..<(4096 * 4 + 260) { laterPage[offset] ^= 0x5A }
        try laterPage.write(to: URL(fileURLWithPath: backup))
        await expectError(.databaseDamaged) { try await manager.restore(from: backup) }
        try expectNothingRestored()

        // A damaged first page.
        var firstPage = original
        for offset in 100..<140 { firstPage[offset] ^= 0xA5 }
        try firstPage.write(to: URL(fileURLWithPath: backup))
        await expectError(.databaseDamaged) { try await manager.restore(from: backup) }
        try expectNothingRestored()
        try original.write(to: URL(fileURLWithPath: backup))

        // The .key of another database beside the backup.
        let backupKey = try contents(backup + ".key")
        let other = try await TestDatabase(rows: 5)
        try FileManager.default.removeItem(atPath: backup + ".key")
        try FileManager.default.copyItem(atPath: other.path + ".key", toPath: backup + ".key")
        await expectError(.wrongKey) { try await manager.restore(from: backup) }
        try expectNothingRestored()

        // No .key beside the backup.
        try FileManager.default.removeItem(atPath: backup + ".key")
        await expectError(.keyFileMissing) { try await manager.restore(from: backup) }
        try expectNothingRestored()
        #expect(
            FileManager.default.createFile(
                atPath: backup + ".key", contents: backupKey, attributes: [.posixPermissions: 0o600]))

        // A live database whose .key records a rotation in progress is not a backup.
        let live = try await TestDatabase(rows: 20)
        await expectError(.io) { try await live.manager(faultAt: .pendingKeyFileWritten).rotateKey() }
        #expect(try KeyFile.read(from: live.path + ".key").pending != nil)
        await expectError(.unsupportedFormat, containing: ["key change in progress"]) {
            try await manager.restore(from: live.path)
        }
        try expectNothingRestored()

        // And the intact backup still restores.
        try await manager.restore(from: backup)
        try await TestDatabase.expectItems(manager, rows: 300)
    }

    @Test("a failed backup leaves nothing: the KMS down, and a file-size limit mid-copy")
    func failedBackupLeavesNothing() async throws {
        let database = try await TestDatabase(rows: 300)
        let backup = database.directory.file("backup.db")
        let down = MockKms(seed: 9)
        down.failNext(10)
        await expectError(.kmsUnavailable) {
            try await database.manager().backup(to: backup, protection: .kek(down, kekId: "k"))
        }
        let leftovers = {
            try FileManager.default.contentsOfDirectory(atPath: database.directory.path).filter {
                $0.hasPrefix("backup")
            }
        }
        #expect(try leftovers() == [])
        // The copy cannot grow past 64 KiB: the write fails (SIGXFSZ ignored, as a full disk would).
        let workspaceEnvironment = [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
            DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable: allowSQLCipher3Databases,
            LocalKms.masterKeyVariable: testMasterKeyBase64,
        ]
        let shell = try requireTool("sh", installedBy: "dash")
        let failed = try await run(
            shell,
            [
                "-c", "trap '' XFSZ; ulimit -f 64; exec \"$0\" backup \"$1\" \"$2\"", DBKeyCLITests.executable,
                database.path, backup,
            ],
            environment: workspaceEnvironment)
        #expect(failed.status == 41 && failed.stderr.contains("I/O error"), "\(failed.stderr)")
        #expect(try leftovers() == [])
        try await database.expectIntact()
    }
}

extension TestDatabase {
    /// Checks that `manager` opens a database with `rows` rows of ``TestDatabase``'s `item` table.
    static func expectItems(_ manager: DatabaseKeyManager, rows: Int, sourceLocation: SourceLocation = #_sourceLocation)
        async throws
    {
        let db = try await manager.open()
        defer { db.close() }
        #expect(try db.integrityCheck() == [], sourceLocation: sourceLocation)
        #expect(
            try db.fetchAll("SELECT count(*), sum(id) FROM item").first?.values
                == [.integer(Int64(rows)), .integer(Int64(rows * (rows + 1) / 2))], sourceLocation: sourceLocation)
    }
}

extension BackupTests {
    /// A workspace database with rows and a backup of it at `backup.db`.
    func backedUp() async throws -> (Workspace, backup: String) {
        let workspace = try Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        #expect(
            try await workspace.dbkey("sql", workspace.database, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)")
                .status == 0)
        let backup = workspace.directory.file("backup.db")
        #expect(try await workspace.dbkey("backup", workspace.database, backup).status == 0)
        return (workspace, backup)
    }

    @Test(
        "a restore killed after its .key was written (the whole copy beside it) is completed by the next restore or the next open",
        arguments: ["restore again", "open"])
    func interruptedRestoreCompletes(by next: String) async throws {
        let (workspace, backup) = try await backedUp()
        let restored = workspace.directory.file("restored.db")
        #expect(try await workspace.dbkey("restore", backup, restored).status == 0)
        // The state a kill between the .key and the link leaves: the .key, the flushed copy.
        #expect(rename(restored, DatabaseFiles(restored).restoringCopy) == 0)
        if next == "restore again" {
            let again = try await workspace.dbkey("restore", backup, restored)
            #expect(again.status == 0, "\(again.stderr)")
        } else {
            let status = try await workspace.dbkey("status", restored)
            #expect(status.status == 0, "\(status.stderr)")
        }
        let read = try await workspace.dbkey("sql", restored, "SELECT count(*) FROM t")
        #expect(read.status == 0 && read.stdout == "2\n", "\(read.stderr)")
        #expect(!FileManager.default.fileExists(atPath: DatabaseFiles(restored).restoringCopy))
        #expect(try await workspace.dbkey("verify", restored).status == 0)
        // A restore of another backup to the completed target is refused, saying so.
        let other = workspace.directory.file("other.db")
        #expect(try await workspace.dbkey("backup", workspace.database, other, "--new-dek").status == 0)
        #expect(rename(restored, DatabaseFiles(restored).restoringCopy) == 0)
        let refused = try await workspace.dbkey("restore", other, restored)
        #expect(refused.status == 13 && refused.stderr.contains("interrupted restore to it was just completed"))
        #expect(try await workspace.dbkey("sql", restored, "SELECT count(*) FROM t").stdout == "2\n")
    }

    @Test("a backup killed after its .key was written is completed by the first open of the backup")
    func interruptedBackupCompletes() async throws {
        let (workspace, backup) = try await backedUp()
        #expect(rename(backup, DatabaseFiles(backup).backupCopy) == 0)
        let restored = workspace.directory.file("restored.db")
        let placed = try await workspace.dbkey("restore", backup, restored)
        #expect(placed.status == 0, "\(placed.stderr)")
        #expect(try await workspace.dbkey("sql", restored, "SELECT count(*) FROM t").stdout == "2\n")
    }

    @Test("a failed restore leaves nothing at its target, lock file included")
    func failedRestoreLeavesNothing() async throws {
        let (workspace, _) = try await backedUp()
        let restored = workspace.directory.file("restored.db")
        let missing = try await workspace.dbkey("restore", workspace.directory.file("nothing.db"), restored)
        #expect(missing.status != 0)
        let left = try FileManager.default.contentsOfDirectory(atPath: workspace.directory.path).filter {
            $0.hasPrefix("restored.db")
        }
        #expect(left.isEmpty, "\(left)")
    }
}
