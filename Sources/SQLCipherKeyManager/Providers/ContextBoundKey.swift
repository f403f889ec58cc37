import Crypto

/// A data key followed by SHA-256 of its encryption context's canonical encoding (and, when
/// asked, random bytes), for KEKs that bind no context of their own — key wrap, TPM sealing — so
/// that the context is checked when the key comes back.
package enum ContextBoundKey {
    /// The key, the context's digest and `saltByteCount` random bytes.
    package static func bind(_ key: SecureBuffer, to context: EncryptionContext, saltByteCount: Int = 0) throws
        -> SecureBuffer
    {
        let digest = Array(SHA256.hash(data: context.canonicalEncoding))
        let salt = try SecureBuffer.random(count: saltByteCount)
        return key.withUnsafeBytes { bytes in
            SecureBuffer(count: bytes.count + digest.count + saltByteCount) { output in
                output.copyMemory(from: bytes)
                UnsafeMutableRawBufferPointer(rebasing: output[bytes.count...]).copyBytes(from: digest)
                salt.withUnsafeBytes {
                    UnsafeMutableRawBufferPointer(rebasing: output[(bytes.count + digest.count)...]).copyMemory(
                        from: $0)
                }
            }
        }
    }

    /// The data key of `payload` when its digest is `context`'s (compared in constant time).
    ///
    /// - Parameter what: What the payload came from, for messages ("The Key Vault wrap with …").
    /// - Throws: ``DBKeyError/Code-swift.struct/ciphertextInvalid`` for another length or
    ///   another context.
    package static func unbind(
        _ payload: SecureBuffer, from context: EncryptionContext, saltByteCount: Int = 0, what: String
    ) throws -> SecureBuffer {
        let digest = Array(SHA256.hash(data: context.canonicalEncoding))
        let keyCount = RawKeyText.keyByteCount
        guard payload.count == keyCount + digest.count + saltByteCount else {
            throw DBKeyError(
                .ciphertextInvalid,
                "\(what) holds \(payload.count) bytes, not a 32-byte data key and its context digest\(saltByteCount > 0 ? " and salt" : "")."
            )
        }
        return try payload.withUnsafeBytes { bytes in
            var difference: UInt8 = 0
            for index in 0..<digest.count { difference |= bytes[keyCount + index] ^ digest[index] }
            guard difference == 0 else {
                throw DBKeyError(
                    .ciphertextInvalid,
                    "\(what) was made for another encryption context: the wrapped key belongs to another database or was altered."
                )
            }
            return SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: bytes.prefix(keyCount)))
        }
    }
}
