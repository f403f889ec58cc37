import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// The SQLCipher formats: new databases in the linked engine's, 3-format databases on SQLCipher
/// 4, `upgrade`, the plaintext header, and databases other SQLCipher builds made.
@Suite("SQLCipher 3 and 4 formats", .tags(.engine, .core))
struct SQLCipherFormatTests {
    static var engine: SQLCipherEngine { try! SQLCipherEngine.linked() }
    static var onSQLCipher4: Bool { engine.majorVersion >= 4 }

    func manager(_ path: String, plaintextHeader: Bool = false, kms: (any KeyManagementService)? = nil) throws
        -> DatabaseKeyManager
    {
        DatabaseKeyManager(
            databasePath: path, kms: try kms ?? localKms(),
            configuration: .init(plaintextHeader: plaintextHeader), logger: silentLogger)
    }

    func count(_ manager: DatabaseKeyManager, table: String = "t") async throws -> Int64? {
        let db = try await manager.open()
        defer { db.close() }
        return try db.fetchAll("SELECT count(*) FROM \(table)").first?[0].integerValue
    }

    /// Debian 12's SQLCipher 3.4.1 shell, when installed beside the engine under test.
    static let debianShell = "/usr/bin/sqlcipher"

    /// Runs an SQLCipher shell with the raw key and settings on stdin; the last line of output.
    func shell(
        _ shell: String, _ path: String, key: SecureBuffer, settings: [String] = [], query: String
    ) async throws -> (status: Int32, last: String) {
        let script = (["PRAGMA key = \"x'\(hex(key))'\";"] + settings + [query]).joined(separator: "\n") + "\n"
        let result = try await run(shell, [path], input: script)
        let failed = result.stderr.contains("not a database") || result.stderr.contains("Error")
        return (failed ? 1 : result.status, String(result.stdout.split(separator: "\n").last ?? ""))
    }

    func debianShellIs341() async throws -> Bool {
        guard FileManager.default.isExecutableFile(atPath: Self.debianShell) else { return false }
        return try await run(Self.debianShell, ["-version"]).stdout.contains("3.15.2")
    }

    /// SQLCipher 4's process-wide log level, read on a keyed in-memory database.
    func logLevel() throws -> String? {
        let db = try DatabaseConnection.open(path: ":memory:", keying: .plaintext, create: true)
        defer { db.close() }
        try db.applyKey(try RawKeyText.make(for: SecureBuffer(count: 32) { _ in }))
        return try db.fetchAll("PRAGMA cipher_log_level").first?[0].textValue
    }

    @Test(
        "SQLCipher's process-wide log level is the app's: set by setLogLevel, never changed by the library",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func logLevelIsTheApps() async throws {
        try SQLCipherEngine.setLogLevel(.error)
        #expect(try logLevel() == "ERROR")
        // Quiet from here on: wrong keys and damage are the tests' daily bread.
        try SQLCipherEngine.setLogLevel(.none)
        #expect(try logLevel() == "NONE")
        let directory = try TemporaryDirectory()
        let manager = try manager(directory.file("l.db"))
        try await manager.initialize()
        try await manager.rotateKey()
        await expectError(.wrongKey) {
            _ = try DatabaseConnection.open(
                path: manager.databasePath, key: try SecureBuffer.random(count: 32), cipher: try newCipher(),
                create: false)
        }
        #expect(try logLevel() == "NONE")
    }

    // MARK: - New databases and the .key

    @Test(
        "a new database has the linked SQLCipher's format, recorded in the .key, and its pages authenticate only in it")
    func newDatabaseFormat() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory.file("n.db"))
        let keyFile = try await manager.initialize()
        let engine = Self.engine
        #expect(keyFile.cipher.compatibility == engine.newDatabaseFormat && keyFile.format == 3)
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(x); INSERT INTO t SELECT randomblob(3000) FROM (SELECT 1 UNION SELECT 2)")
        db.close()
        let key = try await manager.dataKey()
        let salt = try #require(keyFile.cipher.salt)
        var other = keyFile.cipher
        other.compatibility = engine.newDatabaseFormat == 4 ? 3 : 4
        let right = try PageAuthentication.authenticatingPages(
            path: manager.databasePath, key: key, salt: salt, cipher: keyFile.cipher)
        let wrong = try PageAuthentication.authenticatingPages(
            path: manager.databasePath, key: key, salt: salt, cipher: other)
        #expect(right.read >= 2 && right.authenticated == right.read && wrong.authenticated == 0)
    }

    @Test("the .key's cipher fields round-trip, and its MAC covers them: a format changed by hand is refused")
    func cipherFieldsSealed() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory.file("m.db"))
        try await manager.initialize()
        var object = try #require(
            JSONSerialization.jsonObject(with: try contents(manager.keyFilePath)) as? [String: Any])
        var cipher = try #require(object["cipher"] as? [String: Any])
        #expect(cipher["compatibility"] as? Int == Self.engine.newDatabaseFormat)
        cipher["compatibility"] = Self.engine.newDatabaseFormat == 4 ? 3 : 4
        object["cipher"] = cipher
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: manager.keyFilePath))
        await expectError(.keyFileCorrupt, containing: ["altered"]) { _ = try await manager.open() }

        var full = try KeyFile.read(from: manager.keyFilePath)
        full.cipher = CipherSettings(
            pageSize: 8192, sqlcipherVersion: "4.6.1 community", salt: Array(repeating: 7, count: 16),
            compatibility: 4, hmacAlgorithm: .sha256, kdfAlgorithm: .sha256, plaintextHeaderSize: 32)
        let parsed = try full.jsonData().withUnsafeBytes { try KeyFile(jsonBytes: $0, source: "x") }
        #expect(parsed.cipher == full.cipher)
    }

    @Test(
        "cipher settings no SQLCipher can use are refused as a corrupt .key, and format 3 fields in an older file too",
        arguments: [
            ("compatibility", "5"), ("compatibility", "\"4\""), ("hmac_algorithm", "\"HMAC_MD5\""),
            ("kdf_algorithm", "\"PBKDF2_HMAC_SHA384\""), ("plaintext_header_size", "33"),
            ("plaintext_header_size", "-16"), ("plaintext_header_size", "4096"), ("plaintext_header_size", "32"),
        ])
    func invalidCipherFields(field: String, json: String) async throws {
        let value = try JSONSerialization.jsonObject(with: Data(json.utf8), options: .fragmentsAllowed)
        let directory = try TemporaryDirectory()
        let manager = try manager(directory.file("v.db"))
        try await manager.initialize()
        var object = try #require(
            JSONSerialization.jsonObject(with: try contents(manager.keyFilePath)) as? [String: Any])
        var cipher = try #require(object["cipher"] as? [String: Any])
        cipher[field] = value
        if field == "plaintext_header_size", value as? Int == 32 {
            // Valid on its own, but a plaintext header needs the 4 format.
            cipher["compatibility"] = 3
        }
        object["cipher"] = cipher
        let bytes = try JSONSerialization.data(withJSONObject: object)
        #expect(throws: DBKeyError.self) { try bytes.withUnsafeBytes { _ = try KeyFile(jsonBytes: $0, source: "x") } }
        object["format"] = 2
        cipher = try #require(object["cipher"] as? [String: Any])
        cipher = ["page_size": 4096, "compatibility": 4]
        object["cipher"] = cipher
        let older = try JSONSerialization.data(withJSONObject: object)
        do {
            try older.withUnsafeBytes { _ = try KeyFile(jsonBytes: $0, source: "x") }
            Issue.record("a format 2 file with compatibility was accepted")
        } catch let error as DBKeyError {
            #expect(error.code == .keyFileCorrupt && error.message.contains("needs a format 3 file"))
        }
    }

    @Test(
        "VACUUM INTO a file is refused on a managed connection, at the statement, naming why; nothing is written",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func vacuumIntoRefused() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory.file("vac.db"))
        try await manager.initialize()
        let copy = directory.file("copy.db")
        let db = try await manager.open()
        defer { db.close() }
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('row')")
        for sql in ["VACUUM INTO '\(copy)'", "/* a comment */ vacuum main into '\(copy)'"] {
            do {
                try db.execute(sql)
                Issue.record("\(sql) ran")
            } catch let error as DBKeyError {
                #expect(error.resultCode == .SQLITE_AUTH && error.message.contains("VACUUM INTO"), "\(error)")
            }
        }
        #expect((try? contents(copy))?.isEmpty ?? true, "no copy outside management")
        // The connection goes on working, and an in-memory target stays allowed.
        #expect(try db.fetchAll("SELECT x FROM t").first?[0] == .text("row"))
    }

    // MARK: - SQLCipher 3-format databases

    @Test("a 3-format database with an older .key opens, rotates in its format, and SQLCipher 3.4.1 still reads it")
    func format3Database() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("old.db")
        try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 40)
        let manager = try manager(path)
        #expect(try await count(manager) == 40)
        let rotated = try await manager.rotateKey()
        #expect(rotated.cipher.format == 3 && rotated.version == 2 && rotated.format == KeyFile.cipherFieldsFormat)
        #expect(try await count(manager) == 40)
        _ = try await manager.verify()
        let status = try await manager.status()
        #expect(status.upgradeAvailable == Self.onSQLCipher4)
        if try await debianShellIs341() {
            let read = try await shell(
                Self.debianShell, path, key: try await manager.dataKey(), settings: ["PRAGMA cipher_page_size = 4096;"],
                query: "SELECT count(*) FROM t;")
            #expect(read.status == 0 && read.last == "40", "Debian's 3.4.1 reads it: \(read)")
        }
    }

    @Test(
        "on SQLCipher 3.x, a 4-format .key and upgrade are refused as unsupported, and nothing changes",
        .enabled(if: !SQLCipherFormatTests.onSQLCipher4))
    func sqlcipher3Refuses() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("three.db")
        try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 3)
        let before = try contents(path + ".key")
        await expectError(.unsupportedFormat, containing: ["needs SQLCipher 4"]) { try await manager(path).upgrade() }
        #expect(try contents(path + ".key") == before)
        await expectError(.unsupportedFormat, containing: ["needs SQLCipher 4"]) {
            try await manager(directory.file("header.db"), plaintextHeader: true).initialize()
        }
        // A .key that says the 4 format, sealed by its key: the engine cannot read it.
        var keyFile = try KeyFile.read(from: path + ".key")
        keyFile.format = KeyFile.currentFormat
        keyFile.cipher.compatibility = 4
        try keyFile.sealed(with: try await manager(path).dataKey()).write(to: path + ".key")
        await expectError(.unsupportedFormat, containing: ["SQLCipher 4 format", "3.4.1"]) {
            _ = try await manager(path).open()
        }
        // doctor says so too, where every other command refuses.
        let report = try await manager(path).doctor()
        #expect(report.findings.contains { $0.check == "engine-unsupported" }, "\(report.findings)")
    }

    // MARK: - Upgrade

    @Test(
        "upgrade moves a 3-format database to the 4 format under a new key: every row kept, only SQLCipher 4 reads it",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func upgrade() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("up.db")
        let oldKey = try await makeFormat3Database(
            path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 500)
        let manager = try manager(path)
        #expect(try await manager.status().upgradeAvailable)
        let upgraded = try await manager.upgrade()
        #expect(upgraded.cipher.format == 4 && upgraded.version == 2 && upgraded.pending == nil)
        #expect(upgraded.cipher.pageSize == 4096 && upgraded.rotatedAt != nil)
        #expect(upgraded.cipher.salt == Array(try contents(path).prefix(16)))
        #expect(try await count(manager) == 500)
        _ = try await manager.verify()
        #expect(try await !manager.status().upgradeAvailable)
        #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-migrating"))
        let newKey = try await manager.dataKey()
        #expect(newKey != oldKey)
        let sqlcipher4 = try requireTool("sqlcipher", installedBy: "Scripts/build-sqlcipher")
        let read = try await shell(sqlcipher4, path, key: newKey, query: "SELECT count(*) FROM t;")
        #expect(read.status == 0 && read.last == "500", "the 4.6.1 shell reads it with its defaults: \(read)")
        if try await debianShellIs341() {
            let refused = try await shell(
                Self.debianShell, path, key: newKey, settings: ["PRAGMA cipher_page_size = 4096;"],
                query: "SELECT count(*) FROM t;")
            #expect(refused.status != 0, "SQLCipher 3.4.1 cannot read the 4 format")
        }
        // Again: already there, nothing changes.
        let before = try contents(path + ".key")
        #expect(try await manager.upgrade().version == 2)
        #expect(try contents(path + ".key") == before)
    }

    @Test(
        "upgrade gives a 1024-byte-page 3.x database SQLCipher 4's 4096-byte pages, which the 4.6.1 shell reads with its defaults; --page-size keeps another",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4), arguments: [nil, 1024] as [Int?])
    func upgradePageSize(pageSize: Int?) async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("small-pages.db")
        try await makeFormat3Database(
            path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 300, pageSize: 1024)
        let manager = try manager(path)
        let upgraded: KeyFile
        if let pageSize {
            upgraded = try await manager.upgrade(pageSize: pageSize)
        } else {
            upgraded = try await manager.upgrade()
        }
        #expect(upgraded.cipher.format == 4 && upgraded.cipher.pageSize == (pageSize ?? 4096))
        #expect(try await count(manager) == 300)
        let sqlcipher4 = try requireTool("sqlcipher", installedBy: "Scripts/build-sqlcipher")
        let read = try await shell(sqlcipher4, path, key: try await manager.dataKey(), query: "SELECT count(*) FROM t;")
        // SQLCipher 4's defaults (4096-byte pages) read exactly the default upgrade.
        #expect((read.status == 0 && read.last == "300") == (pageSize == nil), "\(read)")
        await expectError(.invalidConfiguration) { _ = try await manager.upgrade(pageSize: 1000) }
    }

    @Test(
        "a failure at each step of an upgrade leaves a database that opens with every row, in one format",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4), arguments: KeyChangeStep.migrationSteps)
    func upgradeFaults(step: KeyChangeStep) async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("f.db")
        try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 200)
        let failing = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(try localKms()), configuration: .init(), logger: silentLogger,
            faultInjector: { if $0 == step { throw DBKeyError(.io, "injected at \($0)") } })
        await expectError(.io) { try await failing.upgrade() }
        let manager = try manager(path)
        #expect(try await count(manager) == 200)
        let settled = try manager.load()
        #expect(settled.pending == nil)
        #expect(settled.cipher.format == 3 ? settled.version == 1 : settled.version == 2)
        #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-migrating"))
        // And the upgrade runs to the end afterwards.
        #expect(try await manager.upgrade().cipher.format == 4)
        #expect(try await count(manager) == 200)
    }

    @Test(
        "a journaled upgrade whose copy was lost is dropped on the next open: the 3-format database and its key stay",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func upgradeCopyLost() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("lost.db")
        try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 12)
        let failing = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(try localKms()), configuration: .init(), logger: silentLogger,
            faultInjector: { if $0 == .pendingKeyFileWritten { throw DBKeyError(.io, "injected") } })
        await expectError(.io) { try await failing.upgrade() }
        #expect(try KeyFile.read(from: path + ".key").pending?.operation == .upgrade)
        try FileManager.default.removeItem(atPath: path + ".dbkey-migrating")
        let manager = try manager(path)
        #expect(try await count(manager) == 12)
        let settled = try manager.load()
        #expect(settled.pending == nil && settled.version == 1 && settled.cipher.format == 3)
    }

    @Test(
        "an upgrade during a KMS outage fails as retryable and changes nothing",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func upgradeKmsOutage() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("outage.db")
        let kms = MockKms(seed: 13)
        try await makeFormat3Database(path: path, kms: kms, kekId: "k", rows: 5)
        let before = (try contents(path), try contents(path + ".key"))
        kms.failNext(1, [.generateDataKey])
        await expectError(.kmsUnavailable) { try await manager(path, kms: kms).upgrade() }
        #expect(try contents(path) == before.0 && contents(path + ".key") == before.1)
        #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-migrating"))
        #expect(try await count(manager(path, kms: kms)) == 5)
    }

    // MARK: - Plaintext header

    @Test(
        "a plaintext header: the file starts as SQLite's, the salt is in the .key, and open, rotate, verify and the shell work",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func plaintextHeader() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("shared.db")
        let manager = try manager(path, plaintextHeader: true)
        let keyFile = try await manager.initialize()
        #expect(keyFile.cipher.plaintextHeaderSize == 32 && keyFile.cipher.format == 4)
        let salt = try #require(keyFile.cipher.salt)
        do {
            let db = try await manager.open()
            try db.execute("PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES ('secret row')")
            db.close()
        }
        let bytes = try contents(path)
        #expect(bytes.prefix(16) == Data("SQLite format 3\0".utf8), "iOS sees an SQLite header")
        #expect(bytes.range(of: Data("secret row".utf8)) == nil)
        #expect(bytes.range(of: Data(salt)) == nil, "the salt lives only in the .key")
        let rotated = try await manager.rotateKey()
        #expect(rotated.cipher.plaintextHeaderSize == 32 && rotated.cipher.salt == salt)
        #expect(try await count(manager) == 1)
        _ = try await manager.verify()
        #expect(try contents(path).prefix(16) == Data("SQLite format 3\0".utf8))
        let saltHex = salt.map { String(format: "%02x", $0) }.joined()
        let sqlcipher4 = try requireTool("sqlcipher", installedBy: "Scripts/build-sqlcipher")
        let read = try await shell(
            sqlcipher4, path, key: try await manager.dataKey(),
            settings: ["PRAGMA cipher_plaintext_header_size = 32;", "PRAGMA cipher_salt = \"x'\(saltHex)'\";"],
            query: "SELECT x FROM t;")
        #expect(read.status == 0 && read.last == "secret row", "\(read)")

        // Another header database's .key: a wrong key, not "a plaintext SQLite database".
        let otherPath = directory.file("other.db")
        try await self.manager(otherPath, plaintextHeader: true).initialize()
        try FileManager.default.removeItem(atPath: path + ".key")
        try FileManager.default.copyItem(atPath: otherPath + ".key", toPath: path + ".key")
        await expectError(.wrongKey) { _ = try await self.manager(path).open() }
    }

    @Test(
        "upgrade --plaintext-header gives a 3-format database the header, with every row",
        .enabled(if: SQLCipherFormatTests.onSQLCipher4))
    func upgradeWithHeader() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("uh.db")
        try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 30)
        let upgraded = try await manager(path, plaintextHeader: true).upgrade()
        #expect(upgraded.cipher.plaintextHeaderSize == 32 && upgraded.cipher.format == 4)
        #expect(try contents(path).prefix(16) == Data("SQLite format 3\0".utf8))
        #expect(try await count(manager(path)) == 30)
    }

    // MARK: - Databases other SQLCipher builds made

    @Test("a passphrase database the sqlcipher shell made with its defaults is adopted with every row")
    func shellMadeAdopted() async throws {
        let sqlcipher = try requireTool("sqlcipher", installedBy: "Scripts/build-sqlcipher")
        let directory = try TemporaryDirectory()
        let path = directory.file("shell.db")
        let made = try await run(
            sqlcipher, [path],
            input:
                "PRAGMA key = 'shell passphrase';\nCREATE TABLE t(x);\nWITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 321) INSERT INTO t SELECT i FROM c;\n"
        )
        #expect(made.status == 0, "\(made.stderr)")
        let manager = try manager(path)
        let keyFile = try await manager.migrate(
            from: .passphrase(try Passphrase.fromText("shell passphrase"), .init()))
        #expect(keyFile.cipher.format == Self.engine.newDatabaseFormat)
        #expect(try await count(manager) == 321)
    }

    /// Runs Python with the `sqlcipher3` wheel (its own SQLCipher 4.12): `script` gets `path`
    /// and `key` (a passphrase, or raw-key text) as sys.argv[1] and the first line of stdin.
    func sqlcipher3Wheel(_ script: String, path: String, key: String) async throws -> ProcessResult {
        let python = try requireTool("python3", installedBy: "python3")
        let prelude = """
            import sys, sqlcipher3
            path = sys.argv[1]
            key = sys.stdin.readline().rstrip("\\n")
            db = sqlcipher3.connect(path)
            db.execute("PRAGMA key = \\"" + key + "\\"")
            """
        let result = try await run(python, ["-c", prelude + "\n" + script, path], input: key + "\n")
        if result.stderr.contains("No module named 'sqlcipher3'") {
            Issue.record("Python's sqlcipher3-binary wheel is missing: run Scripts/setup")
        }
        return result
    }

    @Test(
        "a passphrase database Python's sqlcipher3 wheel (SQLCipher 4.12) made is adopted with every row on SQLCipher 4"
    )
    func wheelMadeAdopted() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("py.db")
        let made = try await sqlcipher3Wheel(
            """
            db.execute("CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT)")
            db.executemany("INSERT INTO note(body) VALUES (?)", [("note %d" % i,) for i in range(1234)])
            db.commit()
            print(db.execute("PRAGMA cipher_version").fetchone()[0])
            """, path: path, key: "wheel passphrase")
        #expect(made.status == 0 && made.stdout.hasPrefix("4."), "\(made.stderr)")
        let manager = try manager(path)
        let source = MigrationSource.passphrase(try Passphrase.fromText("wheel passphrase"), .init())
        guard Self.onSQLCipher4 else {
            await expectError(.unsupportedFormat, containing: ["SQLCipher 4"]) {
                try await manager.migrate(from: source)
            }
            return
        }
        try await manager.migrate(from: source)
        #expect(try await count(manager, table: "note") == 1234)
    }

    @Test("Python's sqlcipher3 wheel reads a database DBKey made, with the raw key and the .key's settings")
    func wheelReadsOurs() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("ours.db")
        let manager = try manager(path)
        let keyFile = try await manager.initialize()
        do {
            let db = try await manager.open()
            try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES ('from dbkey'), ('second')")
            db.close()
        }
        let settings = keyFile.cipher.format == 3 ? "db.execute(\"PRAGMA cipher_compatibility = 3\")\n" : ""
        let read = try await sqlcipher3Wheel(
            settings + """
                db.execute("PRAGMA cipher_page_size = 4096")
                print(db.execute("SELECT count(*), min(x) FROM t").fetchone())
                """, path: path, key: "x'\(hex(try await manager.dataKey()))'")
        #expect(read.status == 0 && read.stdout == "(2, 'from dbkey')\n", "\(read.stderr)")
    }

    @Test(
        "a new database is in the SQLCipher 4 format, or, with SQLCipher 3.x linked, refused unless the 3 format is allowed (init, migrate, dbkey), nothing created"
    )
    func newDatabasesNeedSQLCipher4OrAnOptIn() async throws {
        let engine = try SQLCipherEngine.linked()
        let directory = try TemporaryDirectory()
        func manager(_ name: String, allowing: Bool) throws -> DatabaseKeyManager {
            DatabaseKeyManager(
                databasePath: directory.file(name), kms: try localKms(),
                configuration: .init(allowsSQLCipher3Databases: allowing), logger: silentLogger)
        }
        guard engine.majorVersion < 4 else {
            #expect(try await manager("four.db", allowing: false).initialize().cipher.format == 4)
            return
        }
        let refusal = ["SQLCipher \(engine.version)", "Link SQLCipher 4", "--allow-sqlcipher3", "Nothing was created"]
        await expectError(.unsupportedFormat, containing: refusal) {
            try await manager("refused.db", allowing: false).initialize()
        }
        await expectError(.unsupportedFormat, containing: refusal) {
            _ = try await manager("refused.db", allowing: false).openOrCreate()
        }
        let plain = try DatabaseConnection.open(path: directory.file("plain.db"), keying: .plaintext, create: true)
        try plain.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        plain.close()
        await expectError(.unsupportedFormat, containing: refusal) {
            try await manager("plain.db", allowing: false).migrate(from: .plaintext)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["plain.db"])
        #expect(try await manager("allowed.db", allowing: true).initialize().cipher.format == 3)

        let workspace = try DBKeyCLITests.Workspace()
        let refused = try await workspace.dbkey(
            ["init", workspace.database],
            environment: [DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable: "0"])
        #expect(refused.status == 32 && refused.stderr.contains("Link SQLCipher 4"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: workspace.database))
        let allowed = try await workspace.dbkey(
            ["init", workspace.database, "--allow-sqlcipher3"],
            environment: [DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable: "0"])
        #expect(allowed.status == 0, "\(allowed.stderr)")
    }
}
