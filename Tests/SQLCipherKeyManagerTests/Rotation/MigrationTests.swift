import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

@Suite("Migration of existing databases", .tags(.engine, .core))
struct MigrationTests {
    static let compatFixtures = ThirdPartyFixture.root + "/sqlcipher-compat"

    struct CompatCase: Sendable, CustomTestStringConvertible {
        let file: String
        let settings: PassphraseCipherSettings
        let rows: Int64
        var testDescription: String { file }
    }

    static let openableCases = [
        CompatCase(file: "sqlcipher-3.0-testkey.db", settings: .init(), rows: 78536),
        CompatCase(file: "sqlcipher-2.0-le-testkey.db", settings: .init(kdfIterations: 4000), rows: 78536),
        CompatCase(
            file: "sqlcipher-1.1.8-testkey.db", settings: .init(kdfIterations: 4000, useHMAC: false), rows: 75709),
    ]

    /// Copies a compatibility database from ../shared into a scratch directory.
    func compatCopy(_ file: String, into directory: TemporaryDirectory) throws -> String {
        let source = Self.compatFixtures + "/" + file
        try #require(
            FileManager.default.fileExists(atPath: source),
            "missing fixture \(source): ../shared must sit beside the repository")
        let path = directory.file("legacy.db")
        try FileManager.default.copyItem(atPath: source, toPath: path)
        return path
    }

    func manager(_ path: String, kms: (any KeyManagementService)? = nil, faultAt step: KeyChangeStep? = nil) throws
        -> DatabaseKeyManager
    {
        DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(try kms ?? localKms()),
            configuration: .init(encryptionContext: ["purpose": "migrated"]),
            logger: silentLogger, faultInjector: step.map { InjectedFault(step: $0).injector })
    }

    @Test(
        "SQLCipher's 3.0, 2.0 and 1.1.8 compatibility databases migrate with every row",
        ThirdPartyFixture.required("sqlcipher-compat", from: ThirdPartyFixture.sqlcipherCompat),
        arguments: openableCases)
    func compatMigrates(compat: CompatCase) async throws {
        let directory = try TemporaryDirectory()
        let path = try compatCopy(compat.file, into: directory)
        let manager = try manager(path)
        let keyFile = try await manager.migrate(from: .passphrase(try Passphrase.fromText("testkey"), compat.settings))
        #expect(keyFile.version == 1 && keyFile.pending == nil && keyFile.cipher.pageSize == 4096)
        let db = try await manager.open()
        #expect(try db.fetchAll("SELECT count(*) FROM t1").first?[0] == .integer(compat.rows))
        #expect(try db.integrityCheck() == [])
        db.close()
        #expect(!FileManager.default.fileExists(atPath: manager.database.files.migrationCopy))
        #expect(try await sqlcipherShellOpens(path, key: try await manager.dataKey()))
    }

    @Test(
        "SQLCipher's 4.0 compatibility database migrates with every row on SQLCipher 4, and only in its own format",
        .enabled(if: (try? SQLCipherEngine.linked().majorVersion) ?? 0 >= 4),
        ThirdPartyFixture.required("sqlcipher-compat/sqlcipher-4.0-testkey.db", from: ThirdPartyFixture.sqlcipherCompat)
    )
    func sqlcipher4Adopted() async throws {
        let directory = try TemporaryDirectory()
        let path = try compatCopy("sqlcipher-4.0-testkey.db", into: directory)
        let bytes = try contents(path)
        let passphrase = try Passphrase.fromText("testkey")
        await expectError(.wrongKey, containing: ["SQLCipher 3 format"]) {
            try await manager(path).migrate(from: .passphrase(passphrase, .init(format: 3)))
        }
        #expect(try contents(path) == bytes)
        let adopted = try manager(path)
        let keyFile = try await adopted.migrate(from: .passphrase(passphrase, .init()))
        #expect(keyFile.cipher.format == 4 && keyFile.cipher.pageSize == 4096)
        let db = try await adopted.open()
        #expect(try db.fetchAll("SELECT count(*) FROM t1").first?[0] == .integer(78536))
        #expect(try db.integrityCheck() == [])
        db.close()
        #expect(try await sqlcipherShellOpens(path, key: try await adopted.dataKey()))
    }

    @Test(
        "on SQLCipher 3.x the SQLCipher 4.0 database fails as unsupported format and stays untouched",
        .enabled(if: (try? SQLCipherEngine.linked().majorVersion) ?? 0 < 4),
        ThirdPartyFixture.required("sqlcipher-compat/sqlcipher-4.0-testkey.db", from: ThirdPartyFixture.sqlcipherCompat)
    )
    func sqlcipher4Refused() async throws {
        let directory = try TemporaryDirectory()
        let path = try compatCopy("sqlcipher-4.0-testkey.db", into: directory)
        let bytes = try contents(path)
        let manager = try manager(path)
        await expectError(.unsupportedFormat, containing: ["SQLCipher 4"]) {
            try await manager.migrate(from: .passphrase(try Passphrase.fromText("testkey"), .init()))
        }
        #expect(try contents(path) == bytes)
        // Only the lock file is new: no .key, no copy.
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == [
                "legacy.db", "legacy.db.key.lock",
            ])
    }

    @Test(
        "a wrong passphrase or missing settings is 'wrong key' with advice, and the file stays untouched",
        ThirdPartyFixture.required(
            "sqlcipher-compat/sqlcipher-2.0-le-testkey.db", from: ThirdPartyFixture.sqlcipherCompat))
    func wrongPassphrase() async throws {
        let directory = try TemporaryDirectory()
        let path = try compatCopy("sqlcipher-2.0-le-testkey.db", into: directory)
        let bytes = try contents(path)
        for (passphrase, settings) in [
            ("nottestkey", PassphraseCipherSettings(kdfIterations: 4000)), ("testkey", PassphraseCipherSettings()),
        ] {
            await expectError(.wrongKey, containing: ["--kdf-iter 4000"]) {
                try await manager(path).migrate(from: .passphrase(try Passphrase.fromText(passphrase), settings))
            }
        }
        #expect(try contents(path) == bytes)
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { !$0.hasSuffix(".lock") } == [
                "legacy.db"
            ])
    }

    /// A plaintext database with user_version, application_id, a marker string, optionally WAL.
    func plaintextDatabase(_ directory: TemporaryDirectory, rows: Int = 500, wal: Bool = false) throws -> String {
        let path = directory.file("plain.db")
        let db = try DatabaseConnection.open(path: path, keying: .plaintext, create: true)
        if wal {
            _ = try db.fetchAll("PRAGMA journal_mode = WAL")
        }
        try db.execute(
            "PRAGMA user_version = 42; PRAGMA application_id = 1234567; CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT)"
        )
        let insert = try db.prepare("INSERT INTO note(body) VALUES (?)")
        try db.inTransaction {
            for row in 0..<rows {
                try insert.execute(arguments: [.text("PLAINTEXT-MARKER-\(row)")])
            }
        }
        db.close()
        return path
    }

    @Test(
        "a plaintext database migrates with its rows, user_version, application_id and journal mode",
        arguments: [false, true])
    func plaintextMigrates(wal: Bool) async throws {
        let directory = try TemporaryDirectory()
        let path = try plaintextDatabase(directory, wal: wal)
        #expect(try contents(path).range(of: Data("PLAINTEXT-MARKER-7".utf8)) != nil)
        let manager = try manager(path)
        try await manager.migrate(from: .plaintext)
        let bytes = try contents(path)
        #expect(bytes.prefix(16) != Data("SQLite format 3\0".utf8))
        #expect(bytes.range(of: Data("PLAINTEXT-MARKER".utf8)) == nil)
        let db = try await manager.open()
        #expect(try db.fetchAll("SELECT count(*) FROM note").first?[0] == .integer(500))
        #expect(try db.fetchAll("PRAGMA user_version").first?[0] == .integer(42))
        #expect(try db.fetchAll("PRAGMA application_id").first?[0] == .integer(1_234_567))
        #expect(try db.fetchAll("PRAGMA journal_mode").first?[0] == .text(wal ? "wal" : "delete"))
        #expect(try db.integrityCheck() == [])
        db.close()
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        await expectError(.alreadyInitialized) { try await manager.migrate(from: .plaintext) }
    }

    @Test(
        "plaintext migration of an encrypted file is refused without touching it",
        ThirdPartyFixture.required("sqlcipher-compat/sqlcipher-3.0-testkey.db", from: ThirdPartyFixture.sqlcipherCompat)
    )
    func plaintextOfEncrypted() async throws {
        let directory = try TemporaryDirectory()
        let path = try compatCopy("sqlcipher-3.0-testkey.db", into: directory)
        let bytes = try contents(path)
        await expectError(.unsupportedFormat, containing: ["not a plaintext"]) {
            try await manager(path).migrate(from: .plaintext)
        }
        #expect(try contents(path) == bytes)
    }

    @Test(
        "a failure at any step leaves the plaintext original or the migrated database, each complete",
        arguments: KeyChangeStep.migrationSteps)
    func faultAtStep(step: KeyChangeStep) async throws {
        let directory = try TemporaryDirectory()
        let path = try plaintextDatabase(directory)
        let original = try contents(path)
        await expectError(.io, containing: ["Injected"]) {
            try await manager(path, faultAt: step).migrate(from: .plaintext)
        }
        switch step {
        case .writingPendingKeyFile, .changingDatabase, .verifyingNewKey:
            // Before the .key existed: the original stays, and no copy is left.
            #expect(try contents(path) == original)
            #expect(!FileManager.default.fileExists(atPath: path + ".key"))
            #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-migrating"))
            try await manager(path).migrate(from: .plaintext)
        case .copyingPages:
            Issue.record("a migration makes no rotation copy: it is not among its steps")
        case .pendingKeyFileWritten, .swappingDatabase, .writingFinalKeyFile:
            // The .key records the pending swap — also when its write failed after the rename,
            // and then the copy it points at was kept: the next open finishes it.
            #expect(try KeyFile.read(from: path + ".key").pending?.operation == .migrate)
            #expect(
                step != .pendingKeyFileWritten || FileManager.default.fileExists(atPath: path + ".dbkey-migrating"))
        }
        let db = try await manager(path).open()
        #expect(try db.fetchAll("SELECT count(*) FROM note").first?[0] == .integer(500))
        #expect(try db.integrityCheck() == [])
        db.close()
        #expect(try KeyFile.read(from: path + ".key").pending == nil)
        #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-migrating"))
    }

    @Test("a pending migration whose copy is gone, the plaintext original intact, is dropped: it can run again")
    func abandonedMigration() async throws {
        let directory = try TemporaryDirectory()
        let path = try plaintextDatabase(directory)
        let original = try contents(path)
        await expectError(.io) { try await manager(path, faultAt: .pendingKeyFileWritten).migrate(from: .plaintext) }
        #expect(try KeyFile.read(from: path + ".key").pending?.operation == .migrate)
        // What an older cleanup did after that failure: the copy removed, the record left.
        try FileManager.default.removeItem(atPath: path + ".dbkey-migrating")
        await expectError(.keyFileMissing, containing: ["run the migration again"]) {
            _ = try await manager(path).open()
        }
        #expect(!FileManager.default.fileExists(atPath: path + ".key"))
        #expect(try contents(path) == original)
        try await manager(path).migrate(from: .plaintext)
        #expect(try await manager(path).open().fetchAll("SELECT count(*) FROM note").first?[0] == .integer(500))
    }

    @Test("a KMS outage during migration leaves the original untouched")
    func kmsOutage() async throws {
        let directory = try TemporaryDirectory()
        let path = try plaintextDatabase(directory)
        let original = try contents(path)
        let kms = MockKms(seed: 21)
        kms.failNext(1, [.generateDataKey])
        await expectError(.kmsUnavailable) { try await manager(path, kms: kms).migrate(from: .plaintext) }
        #expect(try contents(path) == original)
        #expect(!FileManager.default.fileExists(atPath: path + ".key"))
    }
}
