import Foundation
import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerAzure
import SQLCipherKeyManagerConformance
import SQLCipherKeyManagerGCP
import SQLCipherKeyManagerPKCS11
import SQLCipherKeyManagerVault
import Testing

/// One provider under test: how to make it and which KEK to ask it for.
struct ProviderUnderTest: Sendable, CustomTestStringConvertible {
    let name: String
    let kekId: String
    let make: @Sendable () throws -> any KeyManagementService

    var testDescription: String { name }

    /// Every provider that runs without a server.
    static let offline: [ProviderUnderTest] = [
        ProviderUnderTest(name: "local", kekId: LocalKms.defaultKekName) { try localKms() },
        ProviderUnderTest(name: "mock (random)", kekId: "conformance") { MockKms() },
        ProviderUnderTest(name: "mock (seeded)", kekId: "conformance") { MockKms(seed: 7) },
    ]

    /// Every provider: the offline ones and those whose real servers the test script starts.
    static let all: [ProviderUnderTest] =
        offline + [
            ProviderUnderTest(name: "aws (moto, key ARN)", kekId: Moto.variables["DBKEY_TEST_AWS_KEY_ARN"] ?? "") {
                try Moto.provider()
            },
            ProviderUnderTest(name: "aws (moto, alias)", kekId: Moto.variables["DBKEY_TEST_AWS_ALIAS"] ?? "") {
                try Moto.provider()
            },
            ProviderUnderTest(name: "vault (OpenBao, associated_data)", kekId: "transit/keys/dbkey") {
                try OpenBao.provider()
            },
            ProviderUnderTest(name: "vault (OpenBao, derived key)", kekId: "transit/keys/dbkey-derived") {
                try OpenBao.provider()
            },
            ProviderUnderTest(name: "vault (OpenBao, nested mount)", kekId: "apps/transit/keys/dbkey") {
                try OpenBao.provider()
            },
            ProviderUnderTest(
                name: "pkcs11 (SoftHSM2)",
                kekId:
                    "token=\(SoftHSM.variables["DBKEY_TEST_PKCS11_TOKEN"] ?? "");object=\(SoftHSM.variables["DBKEY_TEST_PKCS11_OBJECT"] ?? "")"
            ) { try SoftHSM.provider() },
            ProviderUnderTest(
                name: "gcp (fake Cloud KMS, service account)", kekId: environment["DBKEY_TEST_GCP_KEY"] ?? ""
            ) { try FakeCloudKms.provider() },
            ProviderUnderTest(
                name: "azure (fake Key Vault, RSA-OAEP-256)",
                kekId: "127.0.0.1:\(environment["DBKEY_TEST_AZURE_PORT"] ?? "0")/keys/conformance-rsa"
            ) { try FakeKeyVault.provider() },
            ProviderUnderTest(
                name: "azure (fake Managed HSM, A256KW)",
                kekId: "127.0.0.1:\(environment["DBKEY_TEST_AZURE_PORT"] ?? "0")/keys/conformance-hsm"
            ) { try FakeKeyVault.provider() },
        ]

    private static let environment = ProcessInfo.processInfo.environment
}

/// Every provider in the package passes the public conformance suite, check by check.
@Suite("KMS provider conformance", .tags(.core, .aws, .vault, .pkcs11, .gcp, .azure, .tpm))
struct KmsConformanceTests {
    func suite(_ provider: ProviderUnderTest) -> KmsConformanceSuite {
        KmsConformanceSuite(kekId: provider.kekId, makeProvider: provider.make)
    }

    /// Runs one check, alone on the SoftHSM token when the provider is PKCS#11.
    func check(_ provider: ProviderUnderTest, _ body: (KmsConformanceSuite) async throws -> Void) async throws {
        if provider.name.hasPrefix("pkcs11") {
            try await SoftHSM.exclusively { try await body(suite(provider)) }
        } else {
            try await body(suite(provider))
        }
    }

    @Test(
        "a generated key is 32 bytes and decrypts to itself under its resolved KEK id",
        arguments: ProviderUnderTest.all)
    func generateThenDecrypt(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.generateThenDecrypt() }
    }

    @Test("two generated keys differ, and so do two wraps of the same key", arguments: ProviderUnderTest.all)
    func freshness(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.freshness() }
    }

    @Test("encrypt then decrypt returns the key", arguments: ProviderUnderTest.all)
    func encryptThenDecrypt(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.encryptThenDecrypt() }
    }

    @Test("a different encryption context is refused as invalid ciphertext", arguments: ProviderUnderTest.all)
    func contextEnforced(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.contextEnforced() }
    }

    @Test("any altered byte of the wrapped key is refused as invalid ciphertext", arguments: ProviderUnderTest.all)
    func tamperDetected(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.tamperDetected() }
    }

    @Test("health answers with the resolved KEK id", arguments: ProviderUnderTest.all)
    func health(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.health() }
    }

    @Test("the provider id is stable and registrable", arguments: ProviderUnderTest.all)
    func providerName(provider: ProviderUnderTest) async throws {
        try await check(provider) { try $0.providerName() }
    }

    @Test(
        "a database lives through create, rotate, rewrap and reopen with the provider", arguments: ProviderUnderTest.all
    )
    func databaseLifecycle(provider: ProviderUnderTest) async throws {
        try await check(provider) { try await $0.databaseLifecycle() }
    }
}
