import Crypto
import Foundation

/// Data-key wrapping with AES-256-GCM, in the published format of the local provider:
/// base64( `0x01` ‖ nonce(12) ‖ ciphertext(32) ‖ tag(16) ), with additional data
/// `label` ‖ `0x00` ‖ the context's canonical encoding.
///
/// Anyone holding the KEK can unwrap with any AES-GCM library; the format is documented in the
/// README. ``LocalKms`` and ``MockKms`` share it, each with its own label.
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

    package func wrap(_ key: SecureBuffer, under kek: SecureBuffer, context: EncryptionContext) throws -> WrappedKey {
        guard key.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .invalidConfiguration, "Only 32-byte data keys can be wrapped; this one has \(key.count) bytes.")
        }
        let sealed = try key.withUnsafeBytes { plaintext in
            try kek.withUnsafeBytes { kekBytes in
                try AES.GCM.seal(
                    plaintext,
                    using: SymmetricKey(data: kekBytes),
                    nonce: AES.GCM.Nonce(),
                    authenticating: additionalData(for: context)
                )
            }
        }
        let blob = [AESGCMKeyWrap.formatVersion] + Array(sealed.nonce) + Array(sealed.ciphertext) + Array(sealed.tag)
        return WrappedKey(encoded: Base64.encode(blob))
    }

    package func unwrap(_ wrapped: WrappedKey, under kek: SecureBuffer, context: EncryptionContext) throws
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
        do {
            let box = try AES.GCM.SealedBox(
                nonce: AES.GCM.Nonce(data: blob[1..<nonceEnd]),
                ciphertext: blob[nonceEnd..<ciphertextEnd],
                tag: blob[ciphertextEnd...]
            )
            var plaintext = try kek.withUnsafeBytes { kekBytes in
                try AES.GCM.open(box, using: SymmetricKey(data: kekBytes), authenticating: additionalData(for: context))
            }
            return SecureBuffer.takingAndWiping(&plaintext)
        } catch {
            throw DBKeyError(
                .ciphertextInvalid,
                "The wrapped data key failed authentication: it was altered, or the encryption context differs from the one it was wrapped with (\(context))."
            )
        }
    }
}
