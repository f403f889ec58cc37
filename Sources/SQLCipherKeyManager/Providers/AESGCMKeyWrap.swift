import Foundation

/// Data-key wrapping with AES-256-GCM, in the published format of the local provider:
/// base64( `0x01` ‖ nonce(12) ‖ ciphertext(32) ‖ tag(16) ), with additional data
/// `label` ‖ `0x00` ‖ the context's canonical encoding.
///
/// Anyone holding the KEK can unwrap with any AES-GCM library; the format is documented in
/// <doc:KeyManagementProviders>. ``LocalKms`` and ``MockKms`` share it, each with its own label.
package struct AESGCMKeyWrap: Sendable {
    static let formatVersion: UInt8 = 0x01
    static let nonceByteCount = 12
    static let tagByteCount = 16
    static let wrappedByteCount = 1 + nonceByteCount + RawKeyText.keyByteCount + tagByteCount

    /// Separates this use of a KEK from any other: `dbkey-local-v1` for the local provider.
    package let label: String

    package init(label: String) {
        self.label = label
    }

    func additionalData(for context: EncryptionContext) -> [UInt8] {
        Array(label.utf8) + [0x00] + context.canonicalEncoding
    }

    package func wrap(_ key: SecureBuffer, under kek: SecureBuffer, context: EncryptionContext) throws -> WrappedDataKey
    {
        guard key.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .invalidConfiguration, "Only 32-byte data keys can be wrapped; this one has \(key.count) bytes.")
        }
        var generator = SystemRandomNumberGenerator()
        let nonce = (0..<AESGCMKeyWrap.nonceByteCount).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let sealed = try KeyedCrypto.AESGCM.seal(
            key, key: kek, nonce: nonce, additionalData: additionalData(for: context))
        let blob = [AESGCMKeyWrap.formatVersion] + nonce + sealed.ciphertext + sealed.tag
        return WrappedDataKey(encoded: Base64.encode(blob))
    }

    package func unwrap(_ wrapped: WrappedDataKey, under kek: SecureBuffer, context: EncryptionContext) throws
        -> SecureBuffer
    {
        guard let blob = wrapped.base64DecodedBytes,
            blob.count == AESGCMKeyWrap.wrappedByteCount,
            blob[0] == AESGCMKeyWrap.formatVersion
        else {
            throw DBKeyError(
                .ciphertextInvalid,
                "The wrapped data key is not in the \(label) format (version byte 0x01, \(AESGCMKeyWrap.wrappedByteCount) bytes): the .key file was altered or written by another provider."
            )
        }
        let nonceEnd = 1 + AESGCMKeyWrap.nonceByteCount
        let ciphertextEnd = nonceEnd + RawKeyText.keyByteCount
        guard
            let plaintext = try KeyedCrypto.AESGCM.open(
                blob[nonceEnd..<ciphertextEnd], tag: blob[ciphertextEnd...], key: kek, nonce: blob[1..<nonceEnd],
                additionalData: additionalData(for: context))
        else {
            throw DBKeyError(
                .ciphertextInvalid,
                "The wrapped data key failed authentication: it was altered, or the encryption context differs from the one it was wrapped with (\(context))."
            )
        }
        return plaintext
    }
}
