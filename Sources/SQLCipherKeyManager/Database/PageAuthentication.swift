import Crypto
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
    static func authenticates(_ page: [UInt8], number: Int, macKey: SymmetricKey, cipher: CipherSettings) -> Bool {
        let start = number == 1 ? max(cipher.plaintextHeaderSize, CipherSettings.saltByteCount) : 0
        let macStart = page.count - cipher.reservedBytesPerPage + ivSize
        let algorithm = cipher.effectiveHMACAlgorithm
        let pageNumber = withUnsafeBytes(of: UInt32(number).littleEndian) { Array($0) }
        let expected: [UInt8]
        switch algorithm {
        case .sha1: expected = mac(Insecure.SHA1.self, key: macKey, page[start..<macStart], pageNumber)
        case .sha256: expected = mac(SHA256.self, key: macKey, page[start..<macStart], pageNumber)
        case .sha512: expected = mac(SHA512.self, key: macKey, page[start..<macStart], pageNumber)
        }
        return expected == Array(page[macStart..<(macStart + algorithm.byteCount)])
    }

    private static func mac<H: HashFunction>(
        _: H.Type, key: SymmetricKey, _ content: ArraySlice<UInt8>, _ pageNumber: [UInt8]
    ) -> [UInt8] {
        var mac = HMAC<H>(key: key)
        mac.update(data: content)
        mac.update(data: pageNumber)
        return Array(mac.finalize())
    }

    /// The HMAC key of `cipher`'s pages under `key`, as a swift-crypto key.
    static func hmacKey(from key: UnsafeRawBufferPointer, salt: [UInt8], cipher: CipherSettings) -> SymmetricKey {
        hmacKeyBytes(from: key, salt: salt, cipher: cipher).withUnsafeBytes { SymmetricKey(data: $0) }
    }

    /// PBKDF2(the format's KDF, key, salt XOR 0x3a, 2 iterations, 32 bytes), derived in a
    /// ``SecureBuffer``: how SQLCipher derives the HMAC key from a raw key.
    package static func hmacKeyBytes(from key: UnsafeRawBufferPointer, salt: [UInt8], cipher: CipherSettings)
        -> SecureBuffer
    {
        PBKDF2.derive(
            cipher.effectiveKDFAlgorithm, password: key, salt: salt.map { $0 ^ 0x3A }, iterations: 2, byteCount: 32)
    }
}

/// PBKDF2 (RFC 8018) over swift-crypto's HMAC, with SQLCipher's three PRFs.
enum PBKDF2 {
    /// `byteCount` bytes of PBKDF2 with `kdf`'s HMAC, in a ``SecureBuffer``; the intermediate
    /// blocks are wiped.
    static func derive(
        _ kdf: CipherSettings.KDFAlgorithm, password: UnsafeRawBufferPointer, salt: [UInt8], iterations: Int,
        byteCount: Int
    ) -> SecureBuffer {
        switch kdf {
        case .sha1: derive(Insecure.SHA1.self, password, salt, iterations, byteCount)
        case .sha256: derive(SHA256.self, password, salt, iterations, byteCount)
        case .sha512: derive(SHA512.self, password, salt, iterations, byteCount)
        }
    }

    private static func derive<H: HashFunction>(
        _: H.Type, _ password: UnsafeRawBufferPointer, _ salt: [UInt8], _ iterations: Int, _ byteCount: Int
    ) -> SecureBuffer {
        let prf = HMAC<H>(key: SymmetricKey(data: password))
        return SecureBuffer(count: byteCount) { output in
            var blockNumber: UInt32 = 1
            var written = 0
            while written < byteCount {
                var first = prf
                first.update(data: salt)
                first.update(data: withUnsafeBytes(of: blockNumber.bigEndian) { Array($0) })
                var block = Array(first.finalize())
                var result = block
                for _ in 1..<max(iterations, 1) {
                    var next = prf
                    next.update(data: block)
                    let digest = next.finalize()
                    digest.withUnsafeBytes { bytes in
                        for index in block.indices {
                            block[index] = bytes[index]
                            result[index] ^= bytes[index]
                        }
                    }
                }
                let take = min(result.count, byteCount - written)
                for index in 0..<take { output[written + index] = result[index] }
                written += take
                for index in block.indices {
                    block[index] = 0
                    result[index] = 0
                }
                blockNumber += 1
            }
        }
    }
}
