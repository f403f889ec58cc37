internal import COpenSSL

/// HMAC, PBKDF2 and AES-256-GCM over keys that stay in ``SecureBuffer``s, computed by OpenSSL's
/// libcrypto — the library SQLCipher itself uses, already linked.
///
/// swift-crypto's `SymmetricKey` would copy each key into memory of its own that is neither
/// locked nor kept out of core dumps, once per use (every open checks the key check and the
/// `.key`'s MAC). Here the key is read from locked memory where it lies; libcrypto's working
/// copies (an HMAC's padded key, GCM's key schedule) live only for the call and are cleansed
/// when it frees them, and derived keys and unwrapped data keys are written straight into
/// secure memory.
enum KeyedCrypto {
    /// The digests SQLCipher's HMACs and KDFs use.
    enum Digest: String {
        case sha1 = "SHA1"
        case sha256 = "SHA256"
        case sha512 = "SHA512"

        var byteCount: Int {
            switch self {
            case .sha1: 20
            case .sha256: 32
            case .sha512: 64
            }
        }
    }

    /// An HMAC keyed once, for many messages (``PageAuthentication`` checks several pages).
    final class HMAC {
        private let context: OpaquePointer
        let digest: Digest

        init(_ digest: Digest, key: UnsafeRawBufferPointer) {
            // OpenSSL fails here only out of memory, or without its default provider: a
            // process in which no SQLCipher page can be read either.
            guard
                let context = dbkey_hmac_new(
                    digest.rawValue, key.baseAddress?.assumingMemoryBound(to: UInt8.self), key.count)
            else { fatalError("OpenSSL could not make an HMAC-\(digest.rawValue) context") }
            self.context = context
            self.digest = digest
        }

        deinit { EVP_MAC_CTX_free(context) }

        /// HMAC of the concatenation of `parts`.
        func authenticationCode(_ parts: [UnsafeRawBufferPointer]) -> [UInt8] {
            var code = [UInt8](repeating: 0, count: digest.byteCount)
            var length = 0
            let done =
                EVP_MAC_init(context, nil, 0, nil) == 1
                && parts.allSatisfy {
                    EVP_MAC_update(context, $0.baseAddress?.assumingMemoryBound(to: UInt8.self), $0.count) == 1
                }
                && EVP_MAC_final(context, &code, &length, code.count) == 1
            precondition(done && length == code.count, "OpenSSL's HMAC failed")
            return code
        }
    }

    /// HMAC(`digest`, `key`, `message`) in one call.
    static func authenticationCode(_ digest: Digest, key: SecureBuffer, message: [UInt8]) -> [UInt8] {
        key.withUnsafeBytes { keyBytes in
            message.withUnsafeBytes { HMAC(digest, key: keyBytes).authenticationCode([$0]) }
        }
    }

    /// The SHA-256 digest of a key (`EVP_Digest`, whose working state holds the key's bytes
    /// until it is cleansed and freed; swift-crypto's `SHA256` keeps them in its context,
    /// uncleansed, as the memory audit found).
    static func sha256(of key: SecureBuffer) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: Digest.sha256.byteCount)
        var length: UInt32 = 0
        let done = key.withUnsafeBytes { bytes in
            EVP_Digest(bytes.baseAddress, bytes.count, &digest, &length, EVP_sha256(), nil)
        }
        precondition(done == 1 && length == digest.count, "OpenSSL's SHA-256 failed")
        return digest
    }

    /// `byteCount` bytes of PBKDF2-HMAC-`digest` (RFC 8018), written straight into secure
    /// memory (`PKCS5_PBKDF2_HMAC`).
    static func pbkdf2(
        _ digest: Digest, password: UnsafeRawBufferPointer, salt: [UInt8], iterations: Int, byteCount: Int
    ) -> SecureBuffer {
        SecureBuffer(count: byteCount) { output in
            let function: OpaquePointer? =
                switch digest {
                case .sha1: EVP_sha1()
                case .sha256: EVP_sha256()
                case .sha512: EVP_sha512()
                }
            let done = salt.withUnsafeBytes { saltBytes in
                PKCS5_PBKDF2_HMAC(
                    password.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(password.count),
                    saltBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(salt.count),
                    Int32(iterations), function, Int32(byteCount),
                    output.baseAddress?.assumingMemoryBound(to: UInt8.self))
            }
            precondition(done == 1, "OpenSSL's PBKDF2 failed")
        }
    }

    /// AES-256-GCM with a 12-byte nonce and a 16-byte tag.
    enum AESGCM {
        static let nonceByteCount = 12
        static let tagByteCount = 16

        /// Encrypts `plaintext` under `key` with `nonce`, authenticating `additionalData`.
        ///
        /// - Returns: The ciphertext (as long as the plaintext) and the tag.
        static func seal(
            _ plaintext: SecureBuffer, key: SecureBuffer, nonce: [UInt8], additionalData: [UInt8]
        ) throws -> (ciphertext: [UInt8], tag: [UInt8]) {
            guard let context = EVP_CIPHER_CTX_new() else { throw failure("encrypt") }
            defer { EVP_CIPHER_CTX_free(context) }
            var ciphertext = [UInt8](repeating: 0, count: plaintext.count)
            var tag = [UInt8](repeating: 0, count: tagByteCount)
            var length: Int32 = 0
            let done = key.withUnsafeBytes { keyBytes in
                plaintext.withUnsafeBytes { input in
                    EVP_EncryptInit_ex(
                        context, EVP_aes_256_gcm(), nil, keyBytes.baseAddress?.assumingMemoryBound(to: UInt8.self),
                        nonce) == 1
                        && EVP_EncryptUpdate(context, nil, &length, additionalData, Int32(additionalData.count)) == 1
                        && EVP_EncryptUpdate(
                            context, &ciphertext, &length, input.baseAddress?.assumingMemoryBound(to: UInt8.self),
                            Int32(input.count)) == 1
                        && EVP_EncryptFinal_ex(context, &ciphertext, &length) == 1
                        && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_GET_TAG, Int32(tagByteCount), &tag) == 1
                }
            }
            guard done, key.count == 32, nonce.count == nonceByteCount else { throw failure("encrypt") }
            return (ciphertext, tag)
        }

        /// Decrypts `ciphertext` under `key` into secure memory, if its tag and
        /// `additionalData` authenticate.
        ///
        /// - Returns: The plaintext, or `nil` when authentication fails.
        static func open(
            _ ciphertext: ArraySlice<UInt8>, tag: ArraySlice<UInt8>, key: SecureBuffer, nonce: ArraySlice<UInt8>,
            additionalData: [UInt8]
        ) throws -> SecureBuffer? {
            guard key.count == 32, nonce.count == nonceByteCount, tag.count == tagByteCount else { return nil }
            guard let context = EVP_CIPHER_CTX_new() else { throw failure("decrypt") }
            defer { EVP_CIPHER_CTX_free(context) }
            var authentic = false
            var tagBytes = Array(tag)
            let nonceBytes = Array(nonce)
            let plaintext = SecureBuffer(count: ciphertext.count) { output in
                var length: Int32 = 0
                authentic = key.withUnsafeBytes { keyBytes in
                    ciphertext.withUnsafeBytes { input in
                        EVP_DecryptInit_ex(
                            context, EVP_aes_256_gcm(), nil,
                            keyBytes.baseAddress?.assumingMemoryBound(to: UInt8.self), nonceBytes) == 1
                            && EVP_DecryptUpdate(context, nil, &length, additionalData, Int32(additionalData.count))
                                == 1
                            && EVP_DecryptUpdate(
                                context, output.baseAddress?.assumingMemoryBound(to: UInt8.self), &length,
                                input.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(input.count)) == 1
                            && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_GCM_SET_TAG, Int32(tagByteCount), &tagBytes) == 1
                            && EVP_DecryptFinal_ex(
                                context, output.baseAddress?.assumingMemoryBound(to: UInt8.self), &length) == 1
                    }
                }
            }
            // A plaintext that failed authentication is released here, and wiped.
            return authentic ? plaintext : nil
        }

        private static func failure(_ action: String) -> DBKeyError {
            DBKeyError(.kmsUnavailable, "OpenSSL could not \(action) with AES-256-GCM (out of memory?).")
        }
    }
}
