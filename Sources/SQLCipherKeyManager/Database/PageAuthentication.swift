import Crypto
import SystemPackage

/// Checks pages of an SQLCipher 3 file against a key without SQLite, to tell a key that no
/// longer fits the database (it was rekeyed after the `.key` was written) from a damaged first
/// page: with the right key every intact page authenticates; with another key none does.
///
/// The format (DESIGN.md): each page ends with a 48-byte reserve — a 16-byte IV, then a 20-byte
/// HMAC-SHA1 over the page's ciphertext and IV followed by the page number as 4 bytes little
/// endian; page 1's first 16 bytes are the salt, outside the ciphertext. The HMAC key is
/// PBKDF2-HMAC-SHA1(key, salt XOR 0x3a, 2 iterations, 32 bytes).
enum PageAuthentication {
    static let reserve = 48
    static let ivSize = 16
    static let macSize = 20

    /// How many of pages 2 … `limit + 1` of the file authenticate under `key`, and how many were
    /// read; pages past the end of the file are not counted.
    static func authenticatingPages(
        path: String, key: SecureBuffer, salt: [UInt8], pageSize: Int, limit: Int = 8
    ) throws -> (authenticated: Int, read: Int) {
        let macKey = key.withUnsafeBytes { hmacKey(from: $0, salt: salt) }
        let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
        return try descriptor.closeAfter {
            var (authenticated, read) = (0, 0)
            var page = [UInt8](repeating: 0, count: pageSize)
            for number in 2...(limit + 1) {
                let count = try page.withUnsafeMutableBytes {
                    try descriptor.read(fromAbsoluteOffset: Int64((number - 1) * pageSize), into: $0)
                }
                guard count == pageSize else { break }
                read += 1
                if authenticates(page, number: number, macKey: macKey) { authenticated += 1 }
            }
            return (authenticated, read)
        }
    }

    /// Whether page `number` (2 or later) carries a valid HMAC under `macKey`.
    static func authenticates(_ page: [UInt8], number: Int, macKey: SymmetricKey) -> Bool {
        let macStart = page.count - reserve + ivSize
        var mac = HMAC<Insecure.SHA1>(key: macKey)
        mac.update(data: page[0..<macStart])
        mac.update(data: withUnsafeBytes(of: UInt32(number).littleEndian) { Array($0) })
        return Array(mac.finalize()) == Array(page[macStart..<(macStart + macSize)])
    }

    /// PBKDF2-HMAC-SHA1(key, salt XOR 0x3a, 2 iterations, 32 bytes), derived in a
    /// ``SecureBuffer`` (the intermediate MACs stay in swift-crypto's own wiped storage).
    static func hmacKey(from key: UnsafeRawBufferPointer, salt: [UInt8]) -> SymmetricKey {
        let prf = HMAC<Insecure.SHA1>(key: SymmetricKey(data: key))
        let maskedSalt = salt.map { $0 ^ 0x3A }
        let derived = SecureBuffer(count: 40) { output in
            // Two 20-byte blocks, each U1 XOR U2 (two iterations).
            for block in 0..<2 {
                var first = prf
                first.update(data: maskedSalt + [0, 0, 0, UInt8(block + 1)])
                let u1 = first.finalize()
                var second = prf
                u1.withUnsafeBytes { second.update(data: $0) }
                let u2 = second.finalize()
                u1.withUnsafeBytes { a in
                    u2.withUnsafeBytes { b in
                        for index in 0..<20 { output[block * 20 + index] = a[index] ^ b[index] }
                    }
                }
            }
        }
        return derived.withUnsafeBytes { SymmetricKey(data: UnsafeRawBufferPointer(rebasing: $0.prefix(32))) }
    }
}
