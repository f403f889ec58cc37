import SystemPackage

/// Recognises a database written by SQLCipher 4 with its default settings, so that migration on
/// an SQLCipher 3.x build can say "unsupported format" instead of "wrong passphrase".
///
/// It checks page 1's HMAC the way SQLCipher 4 computes it: key = PBKDF2-HMAC-SHA512(passphrase,
/// salt, 256000, 32); the HMAC key, HMAC-SHA512 and the 80-byte reserve as in
/// ``PageAuthentication``; 4096-byte pages.
enum SQLCipher4Detector {
    static let kdfIterations = 256_000
    static let defaults = CipherSettings.new(format: 4, pageSize: CipherSettings.newDatabasePageSize)

    /// Whether the file's first page authenticates under SQLCipher 4's defaults with `passphrase`.
    static func isSQLCipher4(path: String, passphrase: SecureBuffer) -> Bool {
        guard let page = try? firstPage(path), page.count == defaults.pageSize else { return false }
        let salt = Array(page[0..<CipherSettings.saltByteCount])
        let key = passphrase.withUnsafeBytes {
            KeyedCrypto.pbkdf2(.sha512, password: $0, salt: salt, iterations: kdfIterations, byteCount: 32)
        }
        let macKey = key.withUnsafeBytes { PageAuthentication.hmacKey(from: $0, salt: salt, cipher: defaults) }
        return PageAuthentication.authenticates(page, number: 1, macKey: macKey, cipher: defaults)
    }

    private static func firstPage(_ path: String) throws -> [UInt8] {
        let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        return try descriptor.closeAfter {
            var page = [UInt8](repeating: 0, count: defaults.pageSize)
            let count = try page.withUnsafeMutableBytes { try descriptor.read(fromAbsoluteOffset: 0, into: $0) }
            return Array(page.prefix(count))
        }
    }
}
