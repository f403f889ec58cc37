import SystemPackage

/// Checks pages of an SQLCipher file against a key without SQLite, to tell a key that no
/// longer fits the database (it was rekeyed after the `.key` was written) from a damaged first
/// page: with the right key every intact page authenticates; with another key none does.
///
/// The format (DESIGN.md): each page ends with a reserve — a 16-byte IV, then the HMAC over
/// the page's ciphertext and IV followed by the page number as 4 bytes little endian (HMAC-SHA1
/// in a 48-byte reserve in the 3 format, HMAC-SHA512 in an 80-byte reserve in the 4 format);
/// page 1's first 16 bytes are the salt (or its plaintext header), outside the ciphertext. The
/// HMAC key is PBKDF2 with the format's KDF over the key, the salt XOR 0x3a and 2 iterations.
package enum PageAuthentication {
    package static let ivSize = 16

    /// How many of `limit` pages from `firstPage` (2 by default: page 1 is what a failed open
    /// already tried) authenticate under `key` and `cipher`, and how many were read; pages past
    /// the end of the file are not counted.
    static func authenticatingPages(
        path: String, key: SecureBuffer, salt: [UInt8], cipher: CipherSettings, firstPage: Int = 2, limit: Int = 8
    ) throws -> (authenticated: Int, read: Int) {
        let macKey = key.withUnsafeBytes { hmacKey(from: $0, salt: salt, cipher: cipher) }
        let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        return try descriptor.closeAfter {
            var (authenticated, read) = (0, 0)
            var page = [UInt8](repeating: 0, count: cipher.pageSize)
            for number in firstPage..<(firstPage + limit) {
                let count = try page.withUnsafeMutableBytes {
                    try descriptor.read(fromAbsoluteOffset: Int64((number - 1) * cipher.pageSize), into: $0)
                }
                guard count == cipher.pageSize else { break }
                read += 1
                if authenticates(page, number: number, macKey: macKey, cipher: cipher) { authenticated += 1 }
            }
            return (authenticated, read)
        }
    }

    /// Whether page `number` carries a valid HMAC under `macKey` (page 1's authenticated bytes
    /// start after its salt or plaintext header).
    static func authenticates(_ page: [UInt8], number: Int, macKey: KeyedCrypto.HMAC, cipher: CipherSettings) -> Bool {
        let start = number == 1 ? max(cipher.plaintextHeaderSize, CipherSettings.saltByteCount) : 0
        let macStart = page.count - cipher.reservedBytesPerPage + ivSize
        let pageNumber = withUnsafeBytes(of: UInt32(number).littleEndian) { Array($0) }
        let expected = page.withUnsafeBytes { bytes in
            pageNumber.withUnsafeBytes {
                macKey.authenticationCode([UnsafeRawBufferPointer(rebasing: bytes[start..<macStart]), $0])
            }
        }
        return expected.count == cipher.effectiveHMACAlgorithm.byteCount
            && expected == Array(page[macStart..<(macStart + expected.count)])
    }

    /// The HMAC of `cipher`'s pages under `key`, keyed with ``hmacKeyBytes(from:salt:cipher:)``.
    static func hmacKey(from key: UnsafeRawBufferPointer, salt: [UInt8], cipher: CipherSettings) -> KeyedCrypto.HMAC {
        hmacKeyBytes(from: key, salt: salt, cipher: cipher).withUnsafeBytes {
            KeyedCrypto.HMAC(cipher.effectiveHMACAlgorithm.digest, key: $0)
        }
    }

    /// PBKDF2(the format's KDF, key, salt XOR 0x3a, 2 iterations, 32 bytes), derived in a
    /// ``SecureBuffer``: how SQLCipher derives the HMAC key from a raw key.
    package static func hmacKeyBytes(from key: UnsafeRawBufferPointer, salt: [UInt8], cipher: CipherSettings)
        -> SecureBuffer
    {
        KeyedCrypto.pbkdf2(
            cipher.effectiveKDFAlgorithm.digest, password: key, salt: salt.map { $0 ^ 0x3A }, iterations: 2,
            byteCount: 32)
    }
}

extension CipherSettings.HMACAlgorithm {
    /// The digest of this HMAC.
    var digest: KeyedCrypto.Digest {
        switch self {
        case .sha1: .sha1
        case .sha256: .sha256
        case .sha512: .sha512
        }
    }
}

extension CipherSettings.KDFAlgorithm {
    /// The digest of this PBKDF2.
    var digest: KeyedCrypto.Digest {
        switch self {
        case .sha1: .sha1
        case .sha256: .sha256
        case .sha512: .sha512
        }
    }
}
