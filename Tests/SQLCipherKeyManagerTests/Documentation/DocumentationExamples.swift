import CSQLCipher
import Configuration
import DBKeyCLI
import Foundation
import Crypto
import Logging
import SQLCipherKeyManager
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerAzure
import SQLCipherKeyManagerConfiguration
import SQLCipherKeyManagerConformance
import SQLCipherKeyManagerGCP
import SQLCipherKeyManagerPKCS11
import SQLCipherKeyManagerTPM
import SQLCipherKeyManagerTesting
import SQLCipherKeyManagerVault
import Synchronization
import Testing

// Every Swift example of the README, the DocC articles and the doc comments, as compiled code:
// the test below finds each example's lines here (or in ExampleKms.swift), so an example that
// stops compiling fails the build, and one that drifts from this file fails the test.

/// The name the doc comments give a provider of your own.
typealias MyKms = ExampleKms

extension ExampleKms {
    /// The provider of the doc comments' examples, with the KEKs they name.
    init() {
        self.init(kekNames: ["my-key", "k1"])
    }
}

@Test func myProviderConforms() async throws {
    try await KmsConformanceSuite(kekId: "my-key") { MyKms() }.run()
}

@Test func exampleProviderConforms() async throws {
    let kms = ExampleKms(kekNames: ["k1"])
    try await KmsConformanceSuite(kekId: "k1") { kms }.run()
}

/// The coordinator of ``KeyChangeCoordinator``'s doc comment.
final class NotesStore: KeyChangeCoordinator {
    let manager: DatabaseKeyManager
    let key = Mutex<KeyLease?>(nil)
    init(manager: DatabaseKeyManager) { self.manager = manager }

    func closeForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        // Stop new work, let running work finish, close every handle; then:
        key.withLock {
            $0?.release()
            $0 = nil
        }
    }

    func reopenAfterKeyChange() async {
        let newKey = try? await manager.leaseKey()  // key the app's handles with it
        key.withLock { $0 = newKey }
    }
}

/// The coordinator of the article "Rotating While the App Runs": a read-only handle that goes
/// on reading through a rotation's copy.
final class NotesReader: KeyChangeCoordinator {
    let manager: DatabaseKeyManager
    let key = Mutex<KeyLease?>(nil)
    init(manager: DatabaseKeyManager) { self.manager = manager }

    var readsGoOnDuringRotation: Bool { true }

    func closeWritersForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        // Stop writes and close the handles that write; the read-only handles stay open. Then:
        key.withLock { $0?.releaseLockForRotation() }
    }

    func closeForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        // Just before the swap: let running reads finish, close every handle; then:
        key.withLock {
            $0?.release()
            $0 = nil
        }
    }

    func reopenAfterKeyChange() async {
        let newKey = try? await manager.leaseKey()  // key the app's handles with it
        key.withLock { $0 = newKey }
    }
}

/// The examples of the doc comments, each over the names its comment assumes.
enum DocCommentExamples {
    static func main() async {
        await DBKeyCommand.main(providers: [
            LocalKms.factory, AWSKms.factory, VaultTransit.factory, Pkcs11Kms.factory, GoogleCloudKms.factory,
            AzureKeyVault.factory, Tpm2Kms.factory,
        ])
    }

    static func fetch(db: DatabaseConnection) throws {
        let notes = try db.fetch("SELECT id, body FROM note WHERE id > ?", arguments: [0]) { row in
            (id: row.integer(0), body: row.text(1) ?? "")
        }
        _ = notes
    }

    static func connection(manager: DatabaseKeyManager) async throws {
        let db = try await manager.open()
        try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
        try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
        let rows = try db.fetchAll("SELECT id, body FROM note")
        try db.execute("INSERT INTO note(id, body, score) VALUES (?, ?, ?)", arguments: [1, "hello", 0.5])
        try db.forEachResult("SELECT 1 AS a, 2 AS a; SELECT 3") { columns, rows in
            print(columns, rows.count)
        }
        _ = rows
    }

    static func engine() throws {
        let engine = try SQLCipherEngine.linked()
        print(engine.version, engine.newDatabaseFormat)  // "4.6.1 community" 4
    }

    static func slots(manager: DatabaseKeyManager) async throws {
        let secondRegion = MockKms(seed: 7, providerName: "second-region")
        try await manager.addSlot(secondRegion, kekId: "key-2")
    }

    static func escrowSlot(manager: DatabaseKeyManager) async throws {
        let escrow = try EscrowPrivateKey.generate()  // kept offline; only its public key is here
        try await manager.addEscrowSlot(escrow.publicKey)
    }

    static func recover(manager: DatabaseKeyManager) async throws {
        let escrow = try EscrowPrivateKey(pemFile: "/secure/escrow.pem")
        let newMaster = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
        try await manager.recover(through: .escrow(escrow), to: newMaster, kekId: "default")
    }

    static func doctor(manager: DatabaseKeyManager) async {
        let report = await manager.doctor()
        for finding in report.findings { print(finding.check, finding.message, finding.fix) }
    }

    static func backup(manager: DatabaseKeyManager) async throws {
        let backupKek = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
        try await manager.backup(to: "/backups/app.db", protection: .kek(backupKek, kekId: "default"), newDataKey: true)
    }

    static func fleet() async throws {
        let found = try DatabaseFleet.discover(under: "/srv/tenants")
        let outcomes = await DatabaseFleet.run(found.databases, jobs: 8) { path in
            .init(databasePath: path, status: .unchanged, detail: "looked at")
        }
        print(outcomes.count, found.refused.count)
    }

    static func upgrade(manager: DatabaseKeyManager) async throws {
        let upgraded = try await manager.upgrade()
        print(upgraded.cipher.format, upgraded.version)  // 4, one more than before
    }

    static func answeringRequests(manager: DatabaseKeyManager) {
        let answering = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(2))
                await manager.answerRotationRequest()
            }
        }
        answering.cancel()
    }

    /// The threat model article's examples.
    static func threatModel(manager: DatabaseKeyManager) async throws {
        let unsafe = try manager.load().slots.filter(\.isUnsafeEscrow)
        for slot in unsafe {
            try await manager.removeSlot(slot.number, rotate: true)
        }
        do {
            try await manager.rotateKey()
        } catch DBKeyError.Code.keyChangePending {
            // Recorded: the next open completes or undoes it; nothing is lost.
        }
        let upgraded = try await manager.upgrade()
        print(upgraded.cipher.pageSize)  // 4096
    }

    static func statement(db: DatabaseConnection, readings: [(String, Double)]) throws {
        let insert = try db.prepare("INSERT INTO reading(sensor, value) VALUES (?, ?)")
        try db.inTransaction {
            for (sensor, value) in readings {
                try insert.execute(arguments: [.text(sensor), .real(value)])
            }
        }
    }

    static func errors(manager: DatabaseKeyManager, error: DBKeyError) async throws {
        do {
            let db = try await manager.open()
            try db.execute("PRAGMA user_version")
        } catch DBKeyError.Code.kmsUnavailable {
            // retry later: nothing was changed
        } catch DBKeyError.Code.wrongKey {
            // the .key file does not belong to this database
        }
        switch error.resultCode {
        case .SQLITE_CONSTRAINT?: print("a constraint failed")  // any constraint violation
        default: break
        }
    }

    static func databaseKey(manager: DatabaseKeyManager) async throws {
        let key = try await manager.leaseKey()
        var handle: OpaquePointer?
        guard sqlite3_open_v2(manager.databasePath, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK, let handle else {
            throw DBKeyError(.io, "cannot open the database")
        }
        try key.apply(to: handle)  // sqlite3_key, cipher settings, proof — before any other statement
        // … use the handle …
        sqlite3_close_v2(handle)
        key.release()
    }

    static func auditTrail() -> DatabaseKeyManager.Configuration {
        struct AuditTrail: AuditSink {
            func record(_ event: AuditEvent) {
                print(event.kind.rawValue, event.databasePath, event.provider ?? "-", event.dekVersion ?? 0)
            }
        }
        let configuration = DatabaseKeyManager.Configuration(auditSink: AuditTrail())
        return configuration
    }

    static func manager() async throws {
        let logger = Logger(label: "app.db")
        let manager = DatabaseKeyManager(
            databasePath: NSTemporaryDirectory() + "/app.db",
            kms: try LocalKms.fromEnvironment(logger: logger),
            configuration: .init(encryptionContext: ["purpose": "field-notes"], rotationPeriodDays: 90),
            logger: logger
        )
        let db = try await manager.openOrCreate()  // every launch; the first creates key and database
        try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
    }

    static func keyChanges(manager: DatabaseKeyManager) async throws {
        do {
            let key = try await manager.leaseKey()
            defer { key.release() }
            print("data key version \(key.version), page size \(key.cipherSettings.pageSize)")
        }
        if try manager.needsRotation() {
            let keyFile = try await manager.rotateKey(wait: .seconds(30))
            print("now at key version \(keyFile.version)")
        }
        let newMaster = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
        try await manager.rewrap(to: newMaster, kekId: "default")
    }

    static func providers(logger: Logger, path: String) async throws {
        let context: EncryptionContext = ["purpose": "medical-db", "environment": "production"]
        _ = context
        do {
            let kek = try KekURI("local://default")
            let target = try KmsRegistry(factories: [LocalKms.factory]).target(for: kek)
            _ = target
        }
        do {
            let kms = try LocalKms.fromEnvironment(logger: logger)
            let dataKey = try await kms.generateDataKey(kekId: "default", context: ["purpose": "notes"])
            let again = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: ["purpose": "notes"])
            assert(again == dataKey.plaintext)
        }
        do {
            let factory = KmsProviderFactory(providerName: "local", uriScheme: "local") { environment, logger in
                try LocalKms.fromEnvironment(environment, logger: logger)
            }
            let registry = KmsRegistry(factories: [factory])
            _ = registry
        }
        do {
            let environment: ProviderEnvironment = [LocalKms.masterKeyFileVariable: "/etc/app/master.key"]
            let kms = try LocalKms.fromEnvironment(environment, logger: logger)
            _ = kms
        }
        do {
            let config = ConfigReader(providers: [
                InMemoryProvider(values: ["dbkey.master.key.file": "/etc/app/master.key"]),
                EnvironmentVariablesProvider(),
            ])
            let registry = KmsRegistry(factories: [LocalKms.factory], environment: ProviderEnvironment(config))
            _ = registry
        }
        do {
            let registry = KmsRegistry(providers: [try LocalKms.fromEnvironment(logger: logger), MyKms()])
            let manager = DatabaseKeyManager(
                databasePath: "app.db",
                providers: registry,
                configuration: .init(kekProvider: "local"),
                logger: logger
            )
            _ = manager
        }
        do {
            let kms = try LocalKms.fromEnvironment(logger: logger)
            let manager = DatabaseKeyManager(databasePath: "app.db", kms: kms, logger: logger)
            _ = manager
        }
        do {
            let key = try SecureBuffer.random(count: 32)
            let fingerprint = key.withUnsafeBytes { SHA256.hash(data: $0) }
            _ = fingerprint
        }
        do {
            let kms = try AWSKms.fromEnvironment(logger: logger)
            let manager = DatabaseKeyManager(
                databasePath: path, kms: kms,
                configuration: .init(kekId: "alias/app-db", encryptionContext: ["purpose": "notes"]),
                logger: logger)
            _ = manager
        }
        do {
            let kms = try Pkcs11Kms.fromEnvironment(logger: logger)
            let manager = DatabaseKeyManager(
                databasePath: path, kms: kms,
                configuration: .init(kekId: "token=app;object=db-kek", encryptionContext: ["purpose": "notes"]),
                logger: logger)
            _ = manager
        }
        do {
            let kms = try GoogleCloudKms.fromEnvironment(logger: logger)
            let manager = DatabaseKeyManager(
                databasePath: path, kms: kms,
                configuration: .init(
                    kekId: "projects/acme/locations/global/keyRings/apps/cryptoKeys/notes-db",
                    encryptionContext: ["purpose": "notes"]),
                logger: logger)
            _ = manager
        }
        do {
            let kms = try AzureKeyVault.fromEnvironment(logger: logger)
            let manager = DatabaseKeyManager(
                databasePath: path, kms: kms,
                configuration: .init(
                    kekId: "myvault.vault.azure.net/keys/app-db", encryptionContext: ["purpose": "notes"]),
                logger: logger)
            _ = manager
        }
        do {
            let kms = try VaultTransit.fromEnvironment(logger: logger)
            let manager = DatabaseKeyManager(
                databasePath: path, kms: kms,
                configuration: .init(kekId: "transit/keys/app-db", encryptionContext: ["purpose": "notes"]),
                logger: logger)
            _ = manager
        }
    }
}

/// The `MockKms` example runs: it is a test.
@Test func mockKmsExample() async throws {
    let directory = try TemporaryDirectory()
    let path = directory.file("mock.db")
    let logger = silentLogger
    let kms = MockKms(seed: 42)
    let manager = DatabaseKeyManager(databasePath: path, kms: kms, configuration: .init(kekId: "test"), logger: logger)
    try await manager.initialize()

    kms.failNext(1, [.decrypt], with: DBKeyError(.kmsUnavailable, "injected outage"))
    await #expect(throws: DBKeyError.self) { try await manager.open() }
    #expect(kms.calls(of: .decrypt).count == 1)
}

enum DocumentationExamples {
    static func library(databasePath: String) async throws {
        let logger = Logger(label: "app.db")
        let kms = try LocalKms.fromEnvironment(logger: logger)
        let manager = DatabaseKeyManager(
            databasePath: databasePath,
            kms: kms,
            configuration: .init(encryptionContext: ["purpose": "field-notes"], rotationPeriodDays: 90),
            logger: logger
        )

        let db = try await manager.openOrCreate()  // every launch; the first creates the DEK, the database, app.db.key
        try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
        try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
        let rows = try db.fetchAll("SELECT id, body FROM note")
        _ = rows
    }

    static func errors(manager: DatabaseKeyManager) async throws {
        do {
            _ = try await manager.open()
        } catch DBKeyError.Code.kmsUnavailable {
            // Nothing was changed: try again later.
        } catch let error as DBKeyError {
            print(error.code, error.path ?? "-", error.message)
        }
    }

    static func keyChanges(manager: DatabaseKeyManager, newMaster: SecureBuffer) async throws {
        try await manager.rotateKey(wait: .seconds(30))  // new DEK, every page re-encrypted
        try await manager.rewrap(to: try LocalKms(masterKey: newMaster), kekId: "default")  // same DEK, new KEK
        try await manager.migrate(from: .plaintext)  // bring an existing database in
        try await manager.migrate(from: .passphrase(try Passphrase.fromFile("old.pass"), .init(kdfIterations: 4000)))
        try await manager.upgrade()  // SQLCipher 3 format → 4, new DEK
    }

    static func rotateWhenDue(manager: DatabaseKeyManager) async throws {
        if try manager.needsRotation() {
            try await manager.rotateKey(wait: .seconds(30))
        }
        try await manager.rewrap(to: try LocalKms(masterKey: try SecureBuffer.random(count: 32)), kekId: "default")
    }

    static func registry(databasePath: String, logger: Logger) throws -> DatabaseKeyManager {
        let registry = KmsRegistry(providers: [
            try LocalKms.fromEnvironment(logger: logger), ExampleKms(kekNames: ["k1"]),
        ])
        let manager = DatabaseKeyManager(
            databasePath: databasePath,
            providers: registry,
            configuration: .init(kekId: "k1", kekProvider: "example"),
            logger: logger
        )
        return manager
    }

    static func keyingSeam(manager: DatabaseKeyManager) async throws {
        let key = try await manager.leaseKey()
        var handle: OpaquePointer?
        guard sqlite3_open_v2(manager.databasePath, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK, let handle else {
            throw DBKeyError(.io, "cannot open the database")
        }
        try key.apply(to: handle)
        // … statements on handle …
        sqlite3_close_v2(handle)
        key.release()
    }

    static func pool(manager: DatabaseKeyManager) async throws {
        let pool = try await manager.openPool()
        try await pool.write { db in
            try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
            try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
        }
        let count = try await pool.read { db in try db.fetchAll("SELECT count(*) FROM note")[0][0] }
        try await manager.rotateKey()  // reads go on, writes wait; the pool reopens on the new key
        await pool.close()
        _ = count
    }

    static func openPool(manager: DatabaseKeyManager) async throws {
        let pool = try await manager.openPool(maximumReaders: 4, answeringRotationRequests: .seconds(2))
        let notes = try await pool.read { db in try db.fetchAll("SELECT count(*) FROM sqlite_master") }
        _ = notes
    }

    static func coordinator(manager: DatabaseKeyManager) async throws {
        let store = NotesStore(manager: manager)
        let registration = manager.register(store)  // until the store goes away
        try await manager.rotateKey()  // closes the store's handles, rotates, reopens them
        registration.cancel()
    }

    static func poolFetch(pool: ConnectionPool) async throws {
        let titles = try await pool.fetch("SELECT body FROM note ORDER BY id LIMIT ?", arguments: [100]) { row in
            row.text(0) ?? ""
        }
        _ = titles
    }

    static func synchronousPool(manager: DatabaseKeyManager) async throws {
        let pool = try await manager.openPool(maximumReaders: 4, synchronous: .normal)
        try await pool.write { db in try db.execute("CREATE TABLE IF NOT EXISTS note(body TEXT)") }
        await pool.close()
    }

    static func dbkeyWithExample() async {
        await DBKeyCommand.main(providers: [
            LocalKms.factory,
            KmsProviderFactory(providerName: "example", uriScheme: "example") { _, _ in ExampleKms(kekNames: ["k1"]) },
        ])
    }
}

@Suite("Documentation examples", .tags(.core))
struct DocumentationExamplesTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The lines that matter: no blank lines, comments or imports; leading and trailing space
    /// folded.
    static func codeLines(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .map { line in
                line.range(of: "//").map { String(line[..<$0.lowerBound]).trimmingCharacters(in: .whitespaces) } ?? line
            }
            .filter { !$0.isEmpty && !$0.hasPrefix("import ") }
    }

    /// The Swift code blocks of a Markdown file, except those marked as not compiled.
    static func swiftBlocks(in path: String) throws -> [String] {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false)
        var blocks: [String] = []
        var index = 0
        while index < lines.count {
            if lines[index].trimmingCharacters(in: .whitespaces) == "```swift" {
                let marked = index > 0 && lines[index - 1].contains("<!-- not compiled")
                var body: [Substring] = []
                index += 1
                while index < lines.count, lines[index].trimmingCharacters(in: .whitespaces) != "```" {
                    body.append(lines[index])
                    index += 1
                }
                if !marked { blocks.append(body.joined(separator: "\n")) }
            }
            index += 1
        }
        return blocks
    }

    /// The Swift code blocks of the doc comments (`///`) of a source file.
    static func docCommentBlocks(in path: String) throws -> [String] {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false
        )
        .map { $0.trimmingCharacters(in: .whitespaces) }
        var blocks: [String] = []
        var index = 0
        while index < lines.count {
            if lines[index] == "/// ```swift" {
                var body: [String] = []
                index += 1
                while index < lines.count, lines[index] != "/// ```", lines[index].hasPrefix("///") {
                    body.append(String(lines[index].dropFirst(3)))
                    index += 1
                }
                blocks.append(body.joined(separator: "\n"))
            }
            index += 1
        }
        return blocks
    }

    @Test(
        "every Swift example in the README, the DocC catalogue and the doc comments is code this test target compiles")
    func examplesCompile() throws {
        let docc = Self.root.appendingPathComponent("Sources/SQLCipherKeyManager/Documentation.docc").path
        let articles = try FileManager.default.contentsOfDirectory(atPath: docc).filter { $0.hasSuffix(".md") }
            .map { docc + "/" + $0 }
        let sources = [
            URL(fileURLWithPath: #filePath).path,
            Self.root.appendingPathComponent("Tests/SQLCipherKeyManagerTests/Providers/Example/ExampleKms.swift").path,
            // The GRDB article's examples, compiled by the GRDB integration's tests.
            Self.root.appendingPathComponent("Integrations/GRDB/Tests/DBKeyGRDBTests/DocumentationExamples.swift").path,
        ].map { Self.codeLines((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }
        let sourceFiles =
            FileManager.default.enumerator(atPath: Self.root.appendingPathComponent("Sources").path)?
            .compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
            .map { Self.root.appendingPathComponent("Sources/" + $0).path } ?? []
        let markdown = try ([Self.root.appendingPathComponent("README.md").path] + articles).map {
            ($0, try Self.swiftBlocks(in: $0))
        }
        let comments = try sourceFiles.map { ($0, try Self.docCommentBlocks(in: $0)) }
        var checked = 0
        for (file, blocks) in markdown + comments {
            for block in blocks {
                let wanted = Self.codeLines(block)
                guard !wanted.isEmpty else { continue }
                let found = sources.contains { source in
                    source.indices.contains { start in
                        start + wanted.count <= source.count && Array(source[start..<start + wanted.count]) == wanted
                    }
                }
                #expect(found, "an example in \(file) is not compiled code:\n\(block)")
                checked += 1
            }
        }
        #expect(checked >= 35, "found \(checked) examples")
    }
}
