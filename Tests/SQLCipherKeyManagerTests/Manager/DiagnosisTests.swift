import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// Each failure says what happened and the next step that is true.
@Suite("Errors that say what happened", .tags(.engine, .core))
struct DiagnosisTests {
    func populated(_ directory: TemporaryDirectory, kms: MockKms) async throws -> DatabaseKeyManager {
        let manager = DatabaseKeyManager(
            databasePath: directory.file("d.db"), kms: kms, configuration: .init(kekId: "k"), logger: silentLogger)
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(x)")
        try db.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 400) INSERT INTO t SELECT randomblob(100) FROM c"
        )
        return manager
    }

    @Test(
        "the page check agrees with SQLCipher: every page of an intact file authenticates under its key, none under another"
    )
    func pageCheckMatchesSQLCipher() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populated(directory, kms: MockKms(seed: 101))
        let keyFile = try manager.load()
        let key = try await manager.dataKey()
        let salt = try #require(keyFile.cipher.salt)
        let right = try PageAuthentication.authenticatingPages(
            path: manager.databasePath, key: key, salt: salt, cipher: try newCipher())
        #expect(right.read == 8 && right.authenticated == 8)
        let wrong = try PageAuthentication.authenticatingPages(
            path: manager.databasePath, key: try SecureBuffer.random(count: 32), salt: salt, cipher: try newCipher())
        #expect(wrong.read == 8 && wrong.authenticated == 0)
    }

    @Test("a stale .key restored after a rotation is wrong-key naming its version, not damage")
    func staleKeyFile() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populated(directory, kms: MockKms(seed: 102))
        let stale = try contents(manager.keyFilePath)
        try await manager.rotateKey()
        try FileManager.default.removeItem(atPath: manager.keyFilePath)
        _ = FileManager.default.createFile(
            atPath: manager.keyFilePath, contents: stale, attributes: [.posixPermissions: 0o600])
        await expectError(.wrongKey, containing: ["rekeyed after this .key was written", "version 2 or later"]) {
            _ = try await manager.open()
        }
    }

    @Test("a damaged first page with the right .key is database-damaged, and says the later pages are intact")
    func damagedFirstPage() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populated(directory, kms: MockKms(seed: 103))
        var bytes = try contents(manager.databasePath)
        bytes[100] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: manager.databasePath))
        await expectError(.databaseDamaged, containing: ["later pages authenticate", "first page"]) {
            _ = try await manager.open()
        }
    }

    @Test("one corrupted byte of the salt is database-damaged, not another database")
    func damagedSalt() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populated(directory, kms: MockKms(seed: 104))
        var bytes = try contents(manager.databasePath)
        bytes[3] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: manager.databasePath))
        await expectError(.databaseDamaged, containing: ["differs", "in 1 byte"]) { _ = try await manager.open() }
    }

    @Test(
        "without room for a copy, rotate refuses before writing; a rotation in place SQLCipher rolls back for lack of room says so, with nothing to recover (under a file-size limit)"
    )
    func rotationWithoutRoom() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        #expect(
            try await workspace.dbkey(
                "sql", workspace.database,
                "CREATE TABLE t(x); WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000) INSERT INTO t SELECT randomblob(300) FROM c"
            ).status == 0)
        let databaseBytes = try contents(workspace.database)
        let kilobytes = databaseBytes.count / 1024
        // bash's ulimit -f counts KiB: half the database, too little for a copy or the rekey's
        // journal. A rotation by copy refuses before writing anything.
        let byCopy = try await run(
            "/bin/bash",
            [
                "-c", "trap '' XFSZ; ulimit -f \(kilobytes / 2); exec \"$0\" rotate \"$1\"", DBKeyCLITests.executable,
                workspace.database,
            ],
            environment: workspace.environment)
        #expect(byCopy.status == 41, "\(byCopy.stderr)")
        #expect(byCopy.stderr.contains("writes a re-encrypted copy") && byCopy.stderr.contains("Nothing was changed"))
        #expect(try contents(workspace.database) == databaseBytes)
        #expect(!FileManager.default.fileExists(atPath: workspace.database + ".dbkey-rotating"))
        let shell = "trap '' XFSZ; ulimit -f \(kilobytes / 2); exec \"$0\" rotate --in-place \"$1\""
        let result = try await run(
            "/bin/bash", ["-c", shell, DBKeyCLITests.executable, workspace.database], environment: workspace.environment
        )
        #expect(result.status == 41, "\(result.stderr)")
        #expect(result.stderr.contains("did not take effect") && result.stderr.contains("nothing needs recovery"))
        #expect(!result.stderr.contains("reported success"))
        #expect(try KeyFile.read(from: workspace.database + ".key").pending == nil)
        #expect(try await workspace.dbkey("rotate", workspace.database).status == 0, "with room, it rotates")
    }
}
