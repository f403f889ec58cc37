import Configuration
import Foundation
import Logging
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerAzure
import SQLCipherKeyManagerConfiguration
import SQLCipherKeyManagerGCP
import SQLCipherKeyManagerPKCS11
import SQLCipherKeyManagerTPM
import SQLCipherKeyManagerVault
import Synchronization
import Testing

@testable import SQLCipherKeyManager

/// Providers configured from an app's own configuration (swift-configuration's `ConfigReader`)
/// as well as from the environment.
@Suite("Provider configuration through ConfigReader", .tags(.core))
struct ProviderConfigurationTests {
    static let factories = [
        LocalKms.factory, AWSKms.factory, VaultTransit.factory, Pkcs11Kms.factory, GoogleCloudKms.factory,
        AzureKeyVault.factory, Tpm2Kms.factory,
    ]

    /// Every variable the package's providers ask for when they are made, from an empty
    /// environment and from this process's.
    static func variablesAsked() -> Set<String> {
        let asked = Mutex<Set<String>>([])
        for answers in [[:], ProcessInfo.processInfo.environment] {
            let recording = ProviderEnvironment { variable in
                asked.withLock { _ = $0.insert(variable) }
                return answers[variable]
            }
            for factory in factories {
                _ = try? factory.makeProvider(environment: recording, logger: silentLogger)
            }
        }
        return asked.withLock { $0 }
    }

    @Test(
        "every variable a provider reads is read at the key swift-configuration's environment provider maps back to it")
    func everyVariableRoundTrips() throws {
        let variables = Self.variablesAsked()
        for expected in [
            "DBKEY_MASTER_KEY", "DBKEY_MASTER_KEY_FILE", "AWS_REGION", "VAULT_ADDR", "DBKEY_PKCS11_MODULE",
        ] {
            #expect(variables.contains(expected), "\(expected) was not asked for")
        }
        let values = Dictionary(uniqueKeysWithValues: variables.map { ($0, "value of \($0)") })
        let environment = ProviderEnvironment(
            ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: values)))
        for variable in variables {
            #expect(environment[variable] == values[variable], "\(variable)")
        }
    }

    @Test("the local provider takes its master key file from an app's in-memory configuration")
    func localProviderFromAppConfiguration() async throws {
        let directory = try TemporaryDirectory()
        let masterKeyPath = directory.file("configured-master.key")
        try Data(testMasterKeyBase64.utf8).write(to: URL(fileURLWithPath: masterKeyPath))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: masterKeyPath)
        let config = ConfigReader(
            provider: InMemoryProvider(values: [
                AbsoluteConfigKey(ProviderEnvironment.configKey(forVariable: LocalKms.masterKeyFileVariable)):
                    ConfigValue(.string(masterKeyPath), isSecret: false)
            ]))
        let path = directory.file("configured.db")
        let manager = DatabaseKeyManager(
            databasePath: path,
            providers: KmsRegistry(
                factories: [LocalKms.factory], environment: ProviderEnvironment(config), logger: silentLogger),
            configuration: .init(kekId: "default"), logger: silentLogger)
        try await manager.initialize()
        #expect(
            try manager.load().kekId == (try localKms()).kekId, "the key is wrapped under the configured master key")
        // The same database through the environment naming the same file.
        let reopened = DatabaseKeyManager(
            databasePath: path,
            providers: KmsRegistry(
                factories: [LocalKms.factory], environment: [LocalKms.masterKeyFileVariable: masterKeyPath],
                logger: silentLogger),
            configuration: .init(kekId: "default"), logger: silentLogger)
        let connection = try await reopened.open()
        connection.close()
    }

    /// Collects what the reader reports of each access.
    final class Reporter: AccessReporter {
        let events = Mutex<[AccessEvent]>([])
        func report(_ event: AccessEvent) { events.withLock { $0.append(event) } }
    }

    @Test("a master key read through ConfigReader is read as a secret, and the secret-holding variables are")
    func secretsAreMarked() throws {
        let reporter = Reporter()
        let config = ConfigReader(
            provider: EnvironmentVariablesProvider(environmentVariables: [
                LocalKms.masterKeyVariable: testMasterKeyBase64
            ]), accessReporter: reporter)
        let kms = try LocalKms.fromEnvironment(ProviderEnvironment(config), logger: silentLogger)
        #expect(kms.kekId == "local:630dcd2966c43366")
        let read = reporter.events.withLock { events in
            events.first { $0.metadata.key.components == ["dbkey", "master", "key"] }
        }
        #expect((try read?.result.get())??.isSecret == true)
        for secret in [
            "DBKEY_MASTER_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "VAULT_TOKEN", "AZURE_CLIENT_SECRET",
            "DBKEY_PKCS11_PIN", "IDENTITY_HEADER", "GOOGLE_OAUTH_ACCESS_TOKEN",
        ] {
            #expect(ProviderEnvironment.isSecret(secret), "\(secret)")
        }
        for plain in ["AWS_REGION", "AWS_ACCESS_KEY_ID", "VAULT_ADDR", "DBKEY_MASTER_KEY_FILE", "DBKEY_PKCS11_MODULE"] {
            #expect(!ProviderEnvironment.isSecret(plain), "\(plain)")
        }
    }
}
