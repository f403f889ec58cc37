import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// User SQL cannot change the key or format behind the journal, through any entry point.
@Suite("SQL that would change keys behind the journal", .tags(.engine, .core))
struct KeyChangeGuardTests {
    static let refusedStatements: [String] = [
        "PRAGMA rekey='hunter2'",
        "PRAGMA rekey=\"x'\(String(repeating: "ab", count: 32))'\"",
        "PRAGMA key='zzz'",
        "PRAGMA main.rekey = 'x'",
        "pragma HEXREKEY = '00112233'",
        "PRAGMA hexkey = '00112233'",
        "PRAGMA activate",
        "PRAGMA cipher_migrate",
        "PRAGMA cipher_page_size = 1024",
        "PRAGMA cipher_use_hmac = OFF",
        "PRAGMA cipher_default_kdf_iter = 1000",
        "PRAGMA kdf_iter = 1000",
        "PRAGMA rekey_cipher = 'aes-128-cbc'",
        "PRAGMA page_size = 1024",
        "PRAGMA page_size=1024; VACUUM",
        "ATTACH 'other.db' AS other",
        "ATTACH 'other.db' AS other KEY ''",
        "ATTACH 'other.db' AS other KEY 'secret'",
        "SELECT sqlcipher_export('main')",
        // SQLCipher 4's settings (refused on 3.4.1 too: every cipher_* given a value).
        "PRAGMA cipher_compatibility = 3",
        "PRAGMA cipher_plaintext_header_size = 32",
        "PRAGMA cipher_salt = \"x'\(String(repeating: "00", count: 16))'\"",
        "PRAGMA cipher_hmac_algorithm = HMAC_SHA1",
        "PRAGMA cipher_kdf_algorithm = PBKDF2_HMAC_SHA1",
        "PRAGMA cipher_log_level = DEBUG",
        "PRAGMA cipher_memory_security = ON",
    ]

    static let allowedStatements: [String] = [
        "PRAGMA cipher_version",
        "PRAGMA cipher_page_size",
        "PRAGMA page_size",
        "PRAGMA integrity_check",
        "PRAGMA user_version = 3",
        "ATTACH ':memory:' AS scratch",
        "VACUUM",
    ]

    func database(_ directory: TemporaryDirectory) async throws -> DatabaseKeyManager {
        let manager = DatabaseKeyManager(
            databasePath: directory.file("g.db"), kms: MockKms(seed: 51), configuration: .init(kekId: "k"),
            logger: silentLogger)
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3)")
        return manager
    }

    @Test(
        "each form is refused by execute, fetchAll and prepare; nothing changes, every row stays",
        arguments: refusedStatements)
    func refusedThroughTheLibrary(sql: String) async throws {
        let directory = try TemporaryDirectory()
        let manager = try await database(directory)
        let keyBefore = try contents(manager.keyFilePath)
        let db = try await manager.open()
        let entryPoints: [(String, () throws -> Void)] = [
            ("execute", { try db.execute(sql) }),
            ("fetchAll", { _ = try db.fetchAll(sql) }),
            ("prepare", { _ = try db.prepare(sql) }),
        ]
        for (name, run) in entryPoints {
            let error = await expectError(.sqlite) { try run() }
            #expect(error?.resultCode == .SQLITE_AUTH, "\(name): \(error.map { "\($0)" } ?? "-")")
            // The guard's own message, naming the managed way, not SQLite's.
            #expect(
                error?.message.contains("dbkey migrate") == true && error?.message.contains("SQLite failed") == false,
                "\(name): \(error?.message ?? "-")")
        }
        db.close()
        #expect(try contents(manager.keyFilePath) == keyBefore)
        #expect(!FileManager.default.fileExists(atPath: directory.file("other.db")))
        let report = try await manager.verify()
        #expect(report.keyFile.version == 1)
        #expect(try await manager.open().fetchAll("SELECT count(*) FROM t").first?[0] == .integer(3))
        #expect(try await manager.rotateKey().version == 2, "a rotation still settles")
    }

    @Test(
        "reading settings, ordinary pragmas, an in-memory ATTACH and VACUUM stay allowed", arguments: allowedStatements)
    func allowed(sql: String) async throws {
        let directory = try TemporaryDirectory()
        let manager = try await database(directory)
        let db = try await manager.open()
        try db.execute(sql)
        db.close()
        #expect(try await manager.open().fetchAll("SELECT count(*) FROM t").first?[0] == .integer(3))
    }

    @Test("dbkey sql refuses every form with exit 40 and the guard's message; verify and rotate still pass")
    func refusedThroughTheCLI() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        #expect(
            try await workspace.dbkey("sql", workspace.database, "CREATE TABLE t(x); INSERT INTO t VALUES (1)").status
                == 0)
        let keyBefore = try contents(workspace.database + ".key")
        for sql in Self.refusedStatements {
            let result = try await workspace.dbkey("sql", workspace.database, sql)
            #expect(result.status == 40, "\(sql): \(result.stderr)")
            #expect(result.stderr.contains("dbkey migrate"), "\(sql): \(result.stderr)")
        }
        #expect(try contents(workspace.database + ".key") == keyBefore)
        #expect(try await workspace.dbkey("verify", workspace.database).status == 0)
        #expect(try await workspace.dbkey("rotate", workspace.database).status == 0)
        #expect(try await workspace.dbkey("sql", workspace.database, "SELECT x FROM t").stdout == "1\n")
    }

    @Test("sqlcipher_export is refused where no statement names it: a column's DEFAULT, when a row is inserted")
    func exportThroughDefault() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await database(directory)
        let keyBefore = try contents(manager.keyFilePath)
        let db = try await manager.open()
        try db.execute("ATTACH ':memory:' AS scratch")
        try db.execute("CREATE TABLE d(y, x DEFAULT (sqlcipher_export('scratch')))")
        let error = await expectError(.sqlite) { try db.execute("INSERT INTO d(y) VALUES (1)") }
        #expect(error?.message.contains("sqlcipher_export writes a copy") == true, "\(error?.message ?? "-")")
        #expect(try db.fetchAll("SELECT count(*) FROM d").first?[0] == .integer(0))
        db.close()
        #expect(try contents(manager.keyFilePath) == keyBefore)
        #expect(try await manager.verify().keyFile.version == 1)
    }

    @Test("the rule itself: keying pragmas always, settings only with a value, files only for ATTACH")
    func rule() {
        #expect(KeyChangeGuard.refusal(action: 19, "REKEY", nil) != nil)
        #expect(KeyChangeGuard.refusal(action: 19, "cipher_version", nil) == nil)
        #expect(KeyChangeGuard.refusal(action: 19, "cipher_integrity_check", nil) == nil)
        #expect(KeyChangeGuard.refusal(action: 19, "cipher_memory_security", "ON") != nil)
        #expect(KeyChangeGuard.refusal(action: 19, "journal_mode", "WAL") == nil)
        #expect(KeyChangeGuard.refusal(action: 24, nil, nil) != nil, "a bound file name is refused too")
        #expect(KeyChangeGuard.refusal(action: 24, ":memory:", nil) == nil)
        #expect(KeyChangeGuard.refusal(action: 31, nil, "SQLCIPHER_EXPORT") != nil)
        #expect(KeyChangeGuard.refusal(action: 31, nil, "count") == nil)
    }
}
