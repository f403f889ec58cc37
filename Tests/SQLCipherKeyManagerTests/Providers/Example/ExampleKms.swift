import Crypto
import Foundation
import SQLCipherKeyManager

/// The provider the "Writing a provider" article builds: data keys sealed with ChaCha20-Poly1305
/// under named KEKs that live in memory, the encryption context bound as additional data.
///
/// It exists to show that the protocol is open — a provider written outside the package passes
/// the public conformance suite and opens databases through the manager and `dbkey` — not as a
/// KMS to use: its KEKs vanish with the process.
struct ExampleKms: KeyManagementService {
    let providerName = "example"
    private let keks: [String: SymmetricKey]

    init(kekNames: [String]) {
        keks = Dictionary(uniqueKeysWithValues: kekNames.map { ($0, SymmetricKey(size: .bits256)) })
    }

    func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let plaintext = try SecureBuffer.random(count: 32)
        return DataKey(
            plaintext: plaintext, wrapped: try await encrypt(plaintext, kekId: kekId, context: context), kekId: kekId)
    }

    func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        let sealed = try key.withUnsafeBytes {
            try ChaChaPoly.seal($0, using: try kek(kekId), authenticating: context.canonicalEncoding)
        }
        return WrappedDataKey(encoded: sealed.combined.base64EncodedString())
    }

    func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer {
        let kek = try kek(kekId)
        guard let bytes = wrapped.base64DecodedBytes, let box = try? ChaChaPoly.SealedBox(combined: bytes),
            var plaintext = try? ChaChaPoly.open(box, using: kek, authenticating: context.canonicalEncoding)
        else {
            throw DBKeyError(
                .ciphertextInvalid, "The wrapped key was altered, or the context differs.", kekId: kekId)
        }
        // swift-crypto hands the plaintext back as Data: copy it into locked memory, wipe it.
        defer { plaintext.resetBytes(in: 0..<plaintext.count) }
        return plaintext.withUnsafeBytes { SecureBuffer(copying: $0) }
    }

    func health(kekId: String) async throws -> KmsHealth {
        _ = try kek(kekId)
        return KmsHealth(kekId: kekId, keyState: "Enabled", latency: .zero)
    }

    private func kek(_ name: String) throws -> SymmetricKey {
        guard let kek = keks[name] else {
            throw DBKeyError(.kmsKeyNotFound, "The example KMS has no KEK \"\(name)\".", kekId: name)
        }
        return kek
    }
}

extension ExampleKms {
    /// How `dbkey` and a registry make it: `example://NAME` names a KEK.
    static func factory(_ kms: ExampleKms) -> KmsProviderFactory {
        KmsProviderFactory(providerName: "example", uriScheme: "example") { _, _ in kms }
    }
}
