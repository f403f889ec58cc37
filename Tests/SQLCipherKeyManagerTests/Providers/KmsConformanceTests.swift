import Foundation
import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
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
        ]
}

/// The behaviour every ``KeyManagementService`` must have.
@Suite("KMS provider conformance")
struct KmsConformanceTests {
    let context: EncryptionContext = ["purpose": "conformance", "tenant": "t-1"]

    @Test(
        "a generated key is 32 bytes and decrypts to itself under its resolved KEK id",
        arguments: ProviderUnderTest.all)
    func generateThenDecrypt(provider: ProviderUnderTest) async throws {
        let kms = try provider.make()
        let dataKey = try await kms.generateDataKey(kekId: provider.kekId, context: context)
        #expect(dataKey.plaintext.count == 32)
        #expect(!dataKey.kekId.isEmpty)
        #expect(!dataKey.wrapped.encoded.isEmpty)
        let unwrapped = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: context)
        #expect(unwrapped == dataKey.plaintext)
    }

    @Test("two generated keys differ, and so do two wraps of the same key", arguments: ProviderUnderTest.all)
    func freshness(provider: ProviderUnderTest) async throws {
        let kms = try provider.make()
        let first = try await kms.generateDataKey(kekId: provider.kekId, context: context)
        let second = try await kms.generateDataKey(kekId: provider.kekId, context: context)
        #expect(first.plaintext != second.plaintext)
        let rewrapped = try await kms.encrypt(first.plaintext, kekId: first.kekId, context: context)
        #expect(rewrapped != first.wrapped)
    }

    @Test("encrypt then decrypt returns the key", arguments: ProviderUnderTest.all)
    func encryptThenDecrypt(provider: ProviderUnderTest) async throws {
        let kms = try provider.make()
        let key = try SecureBuffer.random(count: 32)
        let resolved = try await kms.generateDataKey(kekId: provider.kekId, context: context).kekId
        let wrapped = try await kms.encrypt(key, kekId: resolved, context: context)
        #expect(try await kms.decrypt(wrapped, kekId: resolved, context: context) == key)
    }

    @Test("a different encryption context is refused as invalid ciphertext", arguments: ProviderUnderTest.all)
    func contextEnforced(provider: ProviderUnderTest) async throws {
        let kms = try provider.make()
        let dataKey = try await kms.generateDataKey(kekId: provider.kekId, context: context)
        for other: EncryptionContext in [
            ["purpose": "conformance"], ["purpose": "conformance", "tenant": "t-2"], .empty,
        ] {
            await expectError(.ciphertextInvalid) {
                _ = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: other)
            }
        }
    }

    @Test("any altered byte of the wrapped key is refused as invalid ciphertext", arguments: ProviderUnderTest.all)
    func tamperDetected(provider: ProviderUnderTest) async throws {
        let kms = try provider.make()
        let dataKey = try await kms.generateDataKey(kekId: provider.kekId, context: context)
        // The base64 part: all of it, or what follows Transit's `vault:vN:` prefix.
        let encoded = dataKey.wrapped.encoded
        let prefix = encoded.lastIndex(of: ":").map { String(encoded[...$0]) } ?? ""
        let bytes = try #require(WrappedKey(encoded: String(encoded.dropFirst(prefix.count))).base64DecodedBytes)
        // The middle and the end of the blob: ciphertext and tag in every provider's format.
        // (moto's blobs start with the key id in clear, so altering those bytes names another
        // key; the local format's every byte is checked in LocalKmsTests.)
        for index in [bytes.count / 2, bytes.count - 1] {
            var altered = bytes
            altered[index] ^= 0x01
            let tampered = WrappedKey(encoded: prefix + Data(altered).base64EncodedString())
            await expectError(.ciphertextInvalid) {
                _ = try await kms.decrypt(tampered, kekId: dataKey.kekId, context: context)
            }
        }
        await expectError(.ciphertextInvalid) {
            _ = try await kms.decrypt(WrappedKey(encoded: "not base64!"), kekId: dataKey.kekId, context: context)
        }
    }

    @Test("health answers with the resolved KEK id", arguments: ProviderUnderTest.all)
    func health(provider: ProviderUnderTest) async throws {
        let kms = try provider.make()
        let resolved = try await kms.generateDataKey(kekId: provider.kekId, context: context).kekId
        let health = try await kms.health(kekId: resolved)
        #expect(health.kekId == resolved)
        #expect(health.latency >= .zero)
        #expect(!health.keyState.isEmpty)
    }

    @Test("the provider name is one a .key file may record", arguments: ProviderUnderTest.all)
    func providerName(provider: ProviderUnderTest) async throws {
        #expect(KeyFile.knownProviders.contains(try provider.make().providerName))
    }
}
