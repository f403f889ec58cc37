import DBKeyCLI
import Foundation
import Logging
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerConformance
import SQLCipherKeyManagerTesting
import Testing

/// One manager for every provider: the registry, providers as plug-ins, the pending record of
/// another provider, the older `.key` form, and KEK URIs.
@Suite("Provider registry", .tags(.core))
struct KmsRegistryTests {
    let context: EncryptionContext = ["purpose": "registry"]

    func manager(_ path: String, _ providers: [any KeyManagementService], newKeysBy provider: String = "local")
        -> DatabaseKeyManager
    {
        DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(providers: providers),
            configuration: .init(
                kekId: provider == "local" ? "default" : "k", kekProvider: provider, encryptionContext: context),
            logger: silentLogger)
    }

    /// A provider configured from one variable, to test the factory every package provider uses.
    struct ConfiguredKms: EnvironmentConfigurable {
        let inner: MockKms
        let configured: String
        var providerName: String { "configured" }
        static func fromEnvironment(_ environment: ProviderEnvironment, logger: Logger) throws -> ConfiguredKms {
            guard let seed = environment["CONFIGURED_KMS_SEED"] else {
                throw DBKeyError(.invalidConfiguration, "CONFIGURED_KMS_SEED is unset")
            }
            return ConfiguredKms(inner: MockKms(seed: UInt64(seed), providerName: "configured"), configured: seed)
        }
        func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
            try await inner.generateDataKey(kekId: kekId, context: context)
        }
        func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer
        {
            try await inner.decrypt(wrapped, kekId: kekId, context: context)
        }
        func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
            try await inner.encrypt(key, kekId: kekId, context: context)
        }
        func health(kekId: String) async throws -> KmsHealth { try await inner.health(kekId: kekId) }
    }

    @Test(
        "a factory of an EnvironmentConfigurable provider makes it from the registry's environment, and says why it cannot"
    )
    func environmentConfigurableFactory() async throws {
        let factory = KmsProviderFactory(
            ConfiguredKms.self, providerName: "configured", uriScheme: "configured",
            help: "the seed from $CONFIGURED_KMS_SEED")
        #expect(factory.uriForms == ["configured://KEY"])
        #expect(factory.help == "the seed from $CONFIGURED_KMS_SEED")
        let registry = KmsRegistry(
            factories: [factory], environment: ["CONFIGURED_KMS_SEED": "7"], logger: silentLogger)
        let made = try #require(try registry.provider(named: "configured") as? ConfiguredKms)
        #expect(made.configured == "7")
        let unconfigured = KmsRegistry(factories: [factory], environment: [:], logger: silentLogger)
        await expectError(.invalidConfiguration, containing: ["CONFIGURED_KMS_SEED"]) {
            _ = try unconfigured.provider(named: "configured")
        }
    }

    @Test("one manager opens keys of every registered provider, and still opens after a rewrap across providers")
    func rewrapAcrossProviders() async throws {
        let directory = try TemporaryDirectory()
        let mock = MockKms(seed: 3)
        let manager = manager(directory.file("a.db"), [try localKms(), mock])
        try await manager.initialize()
        do {
            let db = try await manager.open()
            try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)")
        }
        let moved = try await manager.rewrap(to: mock, kekId: "hsm-like")
        #expect(moved.kms == "mock")
        let db = try await manager.open()
        #expect(try db.fetchAll("SELECT count(*) FROM t").first?[0] == .integer(2))
        db.close()
        // Rotation asks the key's own provider for the new key.
        let rotated = try await manager.rotateKey()
        #expect(rotated.kms == "mock" && rotated.version == 2)
        #expect(mock.calls(of: .generateDataKey).count == 1)
        let back = try await manager.rewrap(to: try localKms(), kekId: "default")
        #expect(back.kms == "local")
        #expect(try await manager.open().fetchAll("SELECT count(*) FROM t").first?[0] == .integer(2))
    }

    @Test(
        "several providers and no kekProvider, or an unregistered one: a new key is refused, the registered ids named")
    func ambiguousNewKeyProvider() async throws {
        let directory = try TemporaryDirectory()
        let manager = DatabaseKeyManager(
            databasePath: directory.file("a.db"), providers: KmsRegistry(providers: [try localKms(), MockKms()]),
            logger: silentLogger)
        await expectError(.invalidConfiguration, containing: ["local, mock", "kekProvider"]) {
            try await manager.initialize()
        }
        let misnamed = DatabaseKeyManager(
            databasePath: directory.file("a.db"), providers: KmsRegistry(providers: [try localKms()]),
            configuration: .init(kekProvider: "aws"), logger: silentLogger)
        await expectError(.invalidConfiguration, containing: ["\"aws\"", "registered: local"]) {
            try await misnamed.initialize()
        }
        #expect(!FileManager.default.fileExists(atPath: directory.file("a.db")))
    }

    @Test("a pending change made under another provider settles once it is registered, and names it until then")
    func pendingUnderAnotherProvider() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("p.db")
        let localOnly = manager(path, [try localKms()])
        let keyFile = try await localOnly.initialize()
        do {
            let db = try await localOnly.open()
            try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (42)")
        }
        // A crash after the rekey of a change whose new key came from the mock provider.
        let mock = MockKms(seed: 9)
        let newKey = try await mock.generateDataKey(kekId: "k", context: keyFile.encryptionContext)
        var journal = keyFile
        journal.pending = PendingOperation(
            operation: .rotate, encryptedDek: newKey.wrapped, kekId: newKey.kekId, kms: "mock", version: 2,
            keyCheck: KeyCheck(for: newKey.plaintext), startedAt: KeyFile.now())
        let current = try await localOnly.dataKey()
        try await localOnly.database.keyStore.write(journal, sealedWith: current)
        let connection = try DatabaseConnection.open(
            path: path, key: current, cipher: try newCipher(pageSize: 4096), create: false)
        try connection.rekey(to: newKey.plaintext)
        connection.close()
        let keyBytes = try contents(path + ".key")
        let databaseBytes = try contents(path)

        await expectError(.unsupportedFormat, containing: ["\"mock\"", "registered: local"]) {
            _ = try await manager(path, [try localKms()]).open()
        }
        #expect(try contents(path + ".key") == keyBytes && contents(path) == databaseBytes, "nothing touched")

        let both = manager(path, [try localKms(), mock])
        let db = try await both.open()
        #expect(try db.fetchAll("SELECT x FROM t").first?[0] == .integer(42))
        let settled = try both.load()
        #expect(settled.pending == nil && settled.kms == "mock" && settled.version == 2)
    }

    @Test("a .key of the older form opens through the provider that claims its kek_id, and only then")
    func legacyKekIdClaims() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("old.db")
        // The older form records no format: it describes an SQLCipher 3-format database.
        _ = try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName)
        var object = try #require(
            JSONSerialization.jsonObject(with: try contents(path + ".key")) as? [String: Any])
        for field in ["format", "kms", "mac"] { object[field] = nil }
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: path + ".key"))
        #expect(try KeyFile.read(from: path + ".key").kms == nil)

        let claimed = manager(path, [try localKms(), MockKms()])
        #expect(try claimed.load().kms == "local", "LocalKms claims local: KEK ids")
        try await claimed.open().close()

        await expectError(.keyFileCorrupt, containing: ["no registered provider claims", "registered: mock"]) {
            _ = try await manager(path, [MockKms()], newKeysBy: "mock").open()
        }
    }

    @Test("KEK URIs: SCHEME://KEY and SCHEME:KEY parse; malformed ones and unknown schemes are refused")
    func kekURIs() async throws {
        let pkcs11 = try KekURI("pkcs11:token=a;object=b")
        #expect(pkcs11.scheme == "pkcs11" && pkcs11.keyId == "token=a;object=b")
        let aws = try KekURI("aws-kms://alias/app")
        #expect(aws.scheme == "aws-kms" && aws.keyId == "alias/app")
        for bad in ["nothing", "://x", "Local://x", "local://", "9p://x"] {
            await expectError(.invalidConfiguration) { _ = try KekURI(bad) }
        }
        let registry = KmsRegistry(factories: [LocalKms.factory])
        await expectError(.invalidConfiguration, containing: ["\"kms://nothing\" is not a KEK URI", "local://default"])
        {
            _ = try registry.target(for: try KekURI("kms://nothing"))
        }
        let instance = KmsRegistry(providers: [MockKms()])
        #expect(try instance.target(for: try KekURI("mock://k")).kekId == "k")
    }

    @Test(
        "dbkey init refuses KEK URIs that name nothing, listing the accepted forms, and creates nothing",
        arguments: [
            "local://mykey", "local://relative/file.key", "kms://nothing", "mock://name", "aws-kms:", "nothing",
        ])
    func strictURIs(uri: String) async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let result = try await workspace.dbkey("init", workspace.database, "--kek", uri)
        #expect(result.status == 42, "\(uri): \(result.stderr)")
        #expect(result.stderr.contains("local://default"), "\(uri): \(result.stderr)")
        let accepted = result.stderr.components(separatedBy: "Use one of:").last ?? ""
        #expect(!accepted.contains("mock"), "the CLI does not take mock://")
        #expect(!result.stderr.contains("wrapped under"), "\(uri): not a message about a data key")
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: workspace.directory.path).sorted() == ["master.key"])
    }

    @Test("the local provider names a KEK that is not a master key as a configuration error")
    func localKekNames() async throws {
        let kms = try localKms()
        await expectError(.invalidConfiguration, containing: ["local://default"]) {
            _ = try await kms.generateDataKey(kekId: "mykey", context: .empty)
        }
        await expectError(.kmsKeyNotFound, containing: ["local:0000000000000000"]) {
            _ = try await kms.generateDataKey(kekId: "local:0000000000000000", context: .empty)
        }
    }

    @Test("a provider written outside the package passes the public suite and works through the manager and dbkey")
    func exampleProvider() async throws {
        let kms = ExampleKms(kekNames: ["k1", "k2"])
        try await KmsConformanceSuite(kekId: "k1") { kms }.run()

        let directory = try TemporaryDirectory()
        let path = directory.file("example.db")
        let providers = [LocalKms.factory, ExampleKms.factory(kms)]
        try await DBKeyCommand.run(["init", path, "--kek", "example://k1"], providers: providers)
        try await DBKeyCommand.run(["sql", path, "CREATE TABLE t(x); INSERT INTO t VALUES (7)"], providers: providers)
        try await DBKeyCommand.run(["rotate", path], providers: providers)
        try await DBKeyCommand.run(["rewrap", path, "--to", "example://k2"], providers: providers)
        let keyFile = try KeyFile.read(from: path + ".key")
        #expect(keyFile.kms == "example" && keyFile.kekId == "k2" && keyFile.version == 2)

        let manager = DatabaseKeyManager(databasePath: path, kms: kms, logger: silentLogger)
        #expect(try await manager.open().fetchAll("SELECT x FROM t").first?[0] == .integer(7))
    }
}
