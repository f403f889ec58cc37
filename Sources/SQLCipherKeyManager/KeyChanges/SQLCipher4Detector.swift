import Crypto
import SystemPackage

/// Recognises a database written by SQLCipher 4 with its default settings, which the linked
/// SQLCipher 3.4.1 cannot open, so that migration can say "unsupported format" instead of
/// "wrong passphrase".
///
/// It checks page 1's HMAC the way SQLCipher 4 computes it: key = PBKDF2-HMAC-SHA512(passphrase,
/// salt, 256000, 32); HMAC key = PBKDF2-HMAC-SHA512(key, salt XOR 0x3a, 2, 32); HMAC-SHA512
/// over the page's ciphertext and IV followed by the page number (1) as 4 little-endian bytes;
/// 4096-byte pages with 80 reserved bytes (16 of IV, 64 of HMAC).
enum SQLCipher4Detector {
    static let pageSize = 4096
    static let kdfIterations = 256_000

    /// Whether the file's first page authenticates under SQLCipher 4's defaults with `passphrase`.
    static func isSQLCipher4(path: String, passphrase: SecureBuffer) -> Bool {
        guard let page = try? firstPage(path), page.count == pageSize else { return false }
        let salt = Array(page[0..<16])
        let reserve = 16 + 64
        let ivEnd = pageSize - reserve + 16
        let key = passphrase.withUnsafeBytes { pbkdf2SHA512(password: $0, salt: salt, iterations: kdfIterations) }
        let hmacKey = key.withUnsafeBytes { pbkdf2SHA512(password: $0, salt: salt.map { $0 ^ 0x3A }, iterations: 2) }
        var authenticator = hmacKey.withUnsafeBytes { HMAC<SHA512>(key: SymmetricKey(data: $0)) }
        authenticator.update(data: page[16..<ivEnd])
        authenticator.update(data: [1, 0, 0, 0])
        return Array(authenticator.finalize()) == Array(page[ivEnd..<pageSize])
    }

    private static func firstPage(_ path: String) throws -> [UInt8] {
        let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        return try descriptor.closeAfter {
            var page = [UInt8](repeating: 0, count: pageSize)
            let count = try page.withUnsafeMutableBytes { try descriptor.read(fromAbsoluteOffset: 0, into: $0) }
            return Array(page.prefix(count))
        }
    }

    /// PBKDF2 (RFC 8018) with HMAC-SHA512, one 64-byte block, truncated to 32 bytes.
    private static func pbkdf2SHA512(password: UnsafeRawBufferPointer, salt: [UInt8], iterations: Int) -> SecureBuffer {
        let prf = HMAC<SHA512>(key: SymmetricKey(data: password))
        var first = prf
        first.update(data: salt + [0, 0, 0, 1])
        var block = Array(first.finalize())
        var result = block
        for _ in 1..<iterations {
            var next = prf
            next.update(data: block)
            block = Array(next.finalize())
            for index in result.indices {
                result[index] ^= block[index]
            }
        }
        defer {
            for index in result.indices { result[index] = 0 }
            for index in block.indices { block[index] = 0 }
        }
        return result.withUnsafeBytes { SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(32))) }
    }
}
