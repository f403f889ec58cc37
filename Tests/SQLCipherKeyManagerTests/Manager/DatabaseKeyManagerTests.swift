import Foundation
import Logging
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

@Suite("DatabaseKeyManager", .tags(.engine, .core))
struct LocalDbKeyManagerTests {
    func manager(
        _ directory: TemporaryDirectory,
        name: String = "app.db",
        kms: (any KeyManagementService)? = nil,
        configuration: DatabaseKeyManager.Configuration = .init(encryptionContext: ["purpose": "test"]),
        logger: Logger = silentLogger
    ) throws -> DatabaseKeyManager {
        DatabaseKeyManager(
            databasePath: directory.file(name), kms: try kms ?? localKms(), configuration: configuration, logger: logger
        )
    }

    /// Creates a database with a table of `rows` rows of 200 bytes each.
    func populated(_ manager: DatabaseKeyManager, rows: Int = 10) async throws {
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE item(id INTEGER PRIMARY KEY, body TEXT)")
        let insert = try db.prepare("INSERT INTO item(body) VALUES (?)")
        try db.inTransaction {
            for row in 0..<rows {
                try insert.execute(arguments: [.text(String(repeating: "\(row % 10)", count: 200))])
            }
        }
    }

    @Test("initialize creates a 0600 encrypted database and .key; open reads back what was written")
    func initializeAndOpen() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        let keyFile = try await manager.initialize()
        #expect(keyFile.version == 1 && keyFile.kms == "local" && keyFile.kekId.hasPrefix("local:"))
        #expect(keyFile.cipher.pageSize == 4096)
        let engine = try SQLCipherEngine.linked()
        #expect(keyFile.cipher.sqlcipherVersion == engine.version)
        #expect(
            keyFile.cipher.compatibility == engine.newDatabaseFormat && keyFile.format == KeyFile.cipherFieldsFormat)
        #expect(keyFile.cipher.salt == Array(try contents(manager.databasePath).prefix(16)))
        #expect(keyFile.encryptionContext == ["purpose": "test"])
        #expect(try manager.load() == keyFile)
        for path in [manager.databasePath, manager.keyFilePath] {
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        }
        try await populated(
            DatabaseKeyManager(databasePath: directory.file("b.db"), kms: try localKms(), logger: silentLogger), rows: 3
        )
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(a); INSERT INTO t VALUES ('kept')")
        db.close()
        #expect(try await manager.open().fetchAll("SELECT a FROM t").map(\.values) == [["kept"]])
        #expect(try contents(manager.databasePath).prefix(16) != Data("SQLite format 3\0".utf8))
    }

    @Test("the stock sqlcipher shell opens the database with the raw key and reads the library's rows")
    func sqlcipherShellReads() async throws {
        let sqlcipher = try requireTool("sqlcipher", installedBy: "the Debian package sqlcipher")
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await populated(manager, rows: 25)
        let key = try await manager.dataKey()
        // The key goes through stdin, never argv.
        let script =
            "PRAGMA key = \"x'\(hex(key))'\";\nPRAGMA cipher_page_size = 4096;\nSELECT count(*), min(body), max(id) FROM item;\n"
        let result = try await run(sqlcipher, [manager.databasePath], input: script)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.split(separator: "\n").last == "25|\(String(repeating: "0", count: 200))|25")
        // The shell is the engine the library linked, not a stray one on the PATH.
        let version = try await run(sqlcipher, ["-version"])
        #expect(version.stdout.hasPrefix(try SQLCipherEngine.linked().sqliteVersion), "\(version.stdout)")
        // And without the key, the shell cannot read it.
        let refused = try await run(sqlcipher, [manager.databasePath], input: "SELECT count(*) FROM item;\n")
        #expect(refused.stdout.isEmpty)
        #expect(refused.stderr.contains("not a database") || refused.stderr.contains("encrypted"))
    }

    @Test("initialize refuses an existing database or .key, and changes neither")
    func initializeRefusesExisting() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await manager.initialize()
        let database = try contents(manager.databasePath)
        let keyFile = try contents(manager.keyFilePath)
        await expectError(.alreadyInitialized, containing: [".key already exists"]) { try await manager.initialize() }
        #expect(try contents(manager.databasePath) == database)
        #expect(try contents(manager.keyFilePath) == keyFile)
        try FileManager.default.removeItem(atPath: manager.keyFilePath)
        await expectError(.alreadyInitialized, containing: ["migrate"]) { try await manager.initialize() }
        #expect(try contents(manager.databasePath) == database)
        #expect(!FileManager.default.fileExists(atPath: manager.keyFilePath))
    }

    @Test("a KMS failure during initialize leaves no database and no .key behind")
    func initializeKmsFailure() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 1)
        let manager = try manager(directory, kms: kms, configuration: .init(kekId: "k"))
        kms.failNext(1, [.generateDataKey])
        await expectError(.kmsUnavailable) { try await manager.initialize() }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
        // And it works once the KMS is back.
        try await manager.initialize()
        #expect(try await manager.open().fetchAll("SELECT 1").count == 1)
    }

    @Test("leaseKey creates on first use and returns the same key afterwards")
    func leaseKey() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 5)
        let manager = try manager(directory, kms: kms, configuration: .init(kekId: "k"))
        let first = try await manager.leaseKey()
        #expect(first.key == MockKms.dataKey(seed: 5, index: 0))
        #expect(first.version == 1 && first.cipherSettings.pageSize == 4096)
        first.release()
        let again = try await manager.leaseKey()
        #expect(again.key == first.key)
        again.release()
        #expect(kms.calls(of: .generateDataKey).count == 1)
    }

    @Test("a wrong master key is a KMS key-not-found error, and nothing is changed")
    func wrongMasterKey() async throws {
        let directory = try TemporaryDirectory()
        try await populated(try manager(directory))
        let other = try manager(
            directory, kms: try localKms(masterKeyBase64: Data(repeating: 3, count: 32).base64EncodedString()))
        let before = (try contents(other.databasePath), try contents(other.keyFilePath))
        await expectError(.kmsKeyNotFound, containing: ["master key"]) { _ = try await other.open() }
        #expect(try contents(other.databasePath) == before.0 && contents(other.keyFilePath) == before.1)
    }

    @Test("a .key swapped in from another database is 'wrong key for this database', not 'damaged'")
    func swappedKeyFile() async throws {
        let directory = try TemporaryDirectory()
        let first = try manager(directory, name: "a.db")
        let second = try manager(directory, name: "b.db")
        try await populated(first)
        try await populated(second)
        try FileManager.default.removeItem(atPath: first.keyFilePath)
        try FileManager.default.copyItem(atPath: second.keyFilePath, toPath: first.keyFilePath)
        await expectError(.wrongKey, containing: ["belongs to another database"]) { _ = try await first.open() }
    }

    @Test("an encrypted_dek swapped in from another database fails the key check")
    func swappedEncryptedDek() async throws {
        let directory = try TemporaryDirectory()
        let first = try manager(directory, name: "a.db")
        let second = try manager(directory, name: "b.db")
        try await populated(first)
        try await populated(second)
        var keyFile = try first.load()
        keyFile.encryptedDek = try second.load().encryptedDek
        try keyFile.write(to: first.keyFilePath)
        await expectError(.wrongKey, containing: ["key check"]) { _ = try await first.open() }
    }

    @Test("a damaged first page is 'database damaged', and a damaged later page fails verify as damaged")
    func damagedPages() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await populated(manager, rows: 200)
        let original = try contents(manager.databasePath)
        #expect(original.count >= 4096 * 5)

        var firstPage = original
        for offset in 100..<140 { firstPage[offset] ^= 0xA5 }  // past the 16-byte salt
        try firstPage.write(to: URL(fileURLWithPath: manager.databasePath))
        await expectError(.databaseDamaged, containing: ["first page"]) { _ = try await manager.open() }

        var laterPage = original
        for offset in (4096 * 3 + 200)..<(4096 * 3 + 260) { laterPage[offset] ^= 0x5A }
        try laterPage.write(to: URL(fileURLWithPath: manager.databasePath))
        await expectError(.databaseDamaged) { _ = try await manager.verify() }

        try original.write(to: URL(fileURLWithPath: manager.databasePath))
        #expect(try await manager.verify().pageCount == Int64(original.count / 4096))
    }

    @Test("a plaintext SQLite file under a .key says so and points at migrate")
    func plaintextDatabase() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await manager.initialize()
        var plaintext = Data("SQLite format 3\0".utf8)
        plaintext.append(Data(repeating: 0, count: 4080))
        try plaintext.write(to: URL(fileURLWithPath: manager.databasePath))
        await expectError(.unsupportedFormat, containing: ["plaintext", "migrate"]) { _ = try await manager.open() }
    }

    @Test("a missing database under an existing .key is 'database not found'")
    func missingDatabase() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await manager.initialize()
        try FileManager.default.removeItem(atPath: manager.databasePath)
        await expectError(.databaseNotFound) { _ = try await manager.open() }
        #expect(!FileManager.default.fileExists(atPath: manager.databasePath), "open must not create it")
    }

    @Test("a KMS outage on open is retryable, and the database and .key are untouched")
    func kmsOutageOnOpen() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 9)
        let manager = try manager(directory, kms: kms, configuration: .init(kekId: "k"))
        try await populated(manager)
        let before = (try contents(manager.databasePath), try contents(manager.keyFilePath))
        kms.failNext(1, [.decrypt])
        // A new manager: the first one holds the key in its cache and would not ask the KMS.
        let cold = try self.manager(directory, kms: kms, configuration: .init(kekId: "k"))
        let error = await expectError(.kmsUnavailable) { _ = try await cold.open() }
        #expect(error?.isRetryable == true)
        #expect(try contents(manager.databasePath) == before.0 && contents(manager.keyFilePath) == before.1)
        #expect(try await cold.open().fetchAll("SELECT count(*) FROM item").first?[0] == .integer(10))
    }

    @Test("an altered encryption context in the .key is refused as invalid ciphertext")
    func alteredContext() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await manager.initialize()
        var keyFile = try manager.load()
        keyFile.encryptionContext = ["purpose": "other"]
        try keyFile.write(to: manager.keyFilePath)
        await expectError(.ciphertextInvalid) { _ = try await manager.open() }
    }

    @Test("a .key of a provider that is not registered is unsupported-format, before any KMS call, untouched")
    func providerNotRegistered() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory)
        try await manager.initialize()
        let before = try Data(contentsOf: URL(fileURLWithPath: manager.keyFilePath))
        let kms = MockKms()
        let error = await expectError(.unsupportedFormat, containing: ["\"local\"", "registered: mock"]) {
            _ = try await self.manager(directory, kms: kms).open()
        }
        #expect(error?.path == manager.keyFilePath)
        #expect(kms.calls.isEmpty)
        #expect(try Data(contentsOf: URL(fileURLWithPath: manager.keyFilePath)) == before)
    }

    @Test("needsRotation follows rotation_period_days from the last rotation or creation")
    func needsRotation() async throws {
        let directory = try TemporaryDirectory()
        let manager = try manager(directory, configuration: .init(rotationPeriodDays: 30))
        let keyFile = try await manager.initialize()
        #expect(try !manager.needsRotation(now: keyFile.createdAt.addingTimeInterval(29 * 86_400)))
        #expect(try manager.needsRotation(now: keyFile.createdAt.addingTimeInterval(30 * 86_400 + 1)))
        var rotated = keyFile
        rotated.rotatedAt = keyFile.createdAt.addingTimeInterval(20 * 86_400)
        try rotated.write(to: manager.keyFilePath)
        #expect(try !manager.needsRotation(now: keyFile.createdAt.addingTimeInterval(31 * 86_400)))

        let never = try self.manager(directory, name: "never.db")
        let created = try await never.initialize()
        #expect(try !never.needsRotation(now: created.createdAt.addingTimeInterval(100 * 365 * 86_400)))
    }

    @Test("status reports the metadata, KMS health and open result, and KMS outages without throwing")
    func status() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 2)
        let manager = try manager(directory, kms: kms, configuration: .init(kekId: "k", rotationPeriodDays: 7))
        try await manager.initialize()
        let healthy = try await manager.status()
        #expect(healthy.databaseOpens)
        #expect(try healthy.kmsHealth.get().kekId == "mock:k")
        #expect(!healthy.rotationDue)
        #expect(healthy.keyFile.rotationPeriodDays == 7)

        kms.failNext(2)
        let cold = try self.manager(directory, kms: kms, configuration: .init(kekId: "k"))
        let outage = try await cold.status(now: Date().addingTimeInterval(8 * 86_400))
        #expect(outage.rotationDue)
        #expect(outage.openError?.code == .kmsUnavailable)
        guard case .failure(let error) = outage.kmsHealth else {
            Issue.record("health should have failed")
            return
        }
        #expect(error.code == .kmsUnavailable)
    }

    @Test("audit events are logged at debug for generate, load and failed open, nothing above debug, no key material")
    func auditLog() async throws {
        let directory = try TemporaryDirectory()
        let logs = LogCapture()
        let kms = MockKms(seed: 11)
        let manager = try manager(directory, kms: kms, configuration: .init(kekId: "k"), logger: logs.logger)
        try await manager.initialize()
        _ = try await manager.open()
        kms.failNext(1, [.decrypt])
        _ = try? await self.manager(directory, kms: kms, configuration: .init(kekId: "k"), logger: logs.logger).open()
        let text = logs.lines.joined(separator: "\n")
        for event in ["key.generated", "key.loaded", "open.failed"] {
            #expect(text.contains("debug \(event)"), "missing \(event)")
        }
        // A library logs routine work at debug or trace; what it throws is not logged above.
        #expect(logs.lines.allSatisfy { $0.hasPrefix("debug ") || $0.hasPrefix("trace ") }, "\(logs.lines)")
        let key = MockKms.dataKey(seed: 11, index: 0)
        #expect(!text.lowercased().contains(hex(key)))
        #expect(!text.contains(key.withUnsafeBytes { Data($0).base64EncodedString() }))
    }

    @Test(
        "a statement waits out another connection's write lock for the busy timeout; with .zero it fails at once as in use"
    )
    func busyTimeout() async throws {
        let directory = try TemporaryDirectory()
        let owner = try manager(directory)
        try await populated(owner)
        // Long enough for the commit's fsyncs on a CI machine busy with other tests' I/O.
        let waiting = try manager(directory, configuration: .init(keyCacheTTL: .zero, busyTimeout: .seconds(60)))
        let impatient = try manager(directory, configuration: .init(keyCacheTTL: .zero, busyTimeout: .zero))
        let writer = UncheckedConnection(try await owner.open())
        let reader = UncheckedConnection(try await waiting.open())
        let refused = UncheckedConnection(try await impatient.open())
        // A writer holds the exclusive lock for 400 ms, as another process's commit would.
        try writer.connection.execute("BEGIN EXCLUSIVE")
        try writer.connection.execute("INSERT INTO item(body) VALUES ('late')")
        await expectError(.databaseInUse) { _ = try refused.connection.fetchAll("SELECT count(*) FROM item") }
        // On a thread of its own: a busy cooperative pool must not delay the commit past the
        // reader's timeout.
        let commit = Task {
            try await offPool {
                Thread.sleep(forTimeInterval: 0.4)
                try writer.connection.execute("COMMIT")
            }
        }
        let started = ContinuousClock.now
        let count = try await offPool { try reader.connection.fetchAll("SELECT count(*) FROM item").first?[0] }
        #expect(count == .integer(11), "the read waited for the commit and saw it")
        #expect(ContinuousClock.now - started >= .milliseconds(300))
        try await commit.value
    }

    @Test("the key cache: one Decrypt for a cold open, none warm, one again after the TTL and after a rotation")
    func keyCache() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 31)
        let manager = try manager(
            directory, kms: kms, configuration: .init(kekId: "k", keyCacheTTL: .seconds(10)))
        try await manager.initialize()
        kms.resetCalls()
        try await manager.open().close()
        #expect(kms.calls(of: .decrypt).count == 1, "cold open")
        try await manager.open().close()
        #expect(kms.calls(of: .decrypt).count == 1, "warm open")
        // Expired keys are dropped (and wiped) without waiting for an access; under load the
        // purge may run late, so wait for it rather than for a fixed time. (The TTL is long
        // enough that a loaded machine never stalls the warm open past it.)
        let deadline = ContinuousClock.now + .seconds(60)
        while manager.database.unlocker.cache.count > 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(manager.database.unlocker.cache.count == 0, "expired keys are dropped without an access")
        try await manager.open().close()
        #expect(kms.calls(of: .decrypt).count == 2, "after the TTL")
        try await manager.rotateKey()
        #expect(manager.database.unlocker.cache.count == 0, "a rotation drops every cached key")
        kms.resetCalls()
        try await manager.open().close()
        #expect(kms.calls(of: .decrypt).count == 1, "after a rotation")

        let uncached = try self.manager(directory, kms: kms, configuration: .init(kekId: "k", keyCacheTTL: .zero))
        kms.resetCalls()
        try await uncached.open().close()
        try await uncached.open().close()
        #expect(kms.calls(of: .decrypt).count == 2, "a TTL of zero turns the cache off")
    }
}
