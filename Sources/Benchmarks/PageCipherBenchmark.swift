import Crypto
import BenchmarkSupport
import Foundation
import SQLCipherKeyManager
import _CryptoExtras

/// Page re-encryption on one core, in memory: OpenSSL's EVP (``PageCrypto``, what rotation
/// uses) against the same steps with swift-crypto (`HMAC`, `_CryptoExtras`' AES-CBC), over the
/// pages of a real 64 MB database. Both check each page's HMAC under the old key, decrypt,
/// encrypt under a new key with a fresh IV and compute the new HMAC.
enum PageCipherBenchmark {
    static func run(workdir: String) async throws -> [BenchmarkRow] {
        let path = workdir + "/page-cipher.db"
        let manager = try await OnlineRotation.managedDatabase(path, megabytes: 64, pageSize: 4096, logger: logger)
        let keyFile = try manager.load()
        let cipher = keyFile.cipher
        let oldKey = try rawKey(try await manager.leaseKey())
        let newKey = try SecureBuffer.random(count: 32)
        let image = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let salt = keyFile.cipher.salt ?? Array(image.prefix(16))
        OnlineRotation.removeDatabase(path)
        let pageCount = image.count / cipher.pageSize

        var evpTimes: [Duration] = []
        var swiftCryptoTimes: [Duration] = []
        for _ in 0..<5 {
            var pages = image
            let crypto = try PageCrypto(oldKey: oldKey, newKey: newKey, salt: salt, cipher: cipher)
            let plaintext = UnsafeMutableRawBufferPointer.allocate(byteCount: cipher.pageSize, alignment: 16)
            defer { plaintext.deallocate() }
            evpTimes.append(
                try timedSynchronously {
                    try pages.withUnsafeMutableBytes { bytes in
                        for number in 1...pageCount {
                            let start = (number - 1) * cipher.pageSize
                            try crypto.reencrypt(
                                UnsafeMutableRawBufferPointer(rebasing: bytes[start..<(start + cipher.pageSize)]),
                                number: number, plaintext: plaintext)
                        }
                    }
                })
            pages = image
            let swiftCrypto = SwiftCryptoPages(oldKey: oldKey, newKey: newKey, salt: salt, cipher: cipher)
            swiftCryptoTimes.append(try timedSynchronously { try swiftCrypto.reencrypt(&pages) })
        }
        let bytes = Int64(image.count)
        let evp = megabytesPerSecond(bytes, Measure.median(evpTimes))
        let swiftCrypto = megabytesPerSecond(bytes, Measure.median(swiftCryptoTimes))
        return [
            .init(
                measurement:
                    "page re-encryption on one core, \(cipher.pageSize) B pages, \(cipher.effectiveHMACAlgorithm.rawValue) (OpenSSL EVP, used)",
                ours: String(format: "%.0f MB/s", evp), baseline: String(format: "%.0f MB/s swift-crypto", swiftCrypto),
                ratio: String(format: "%.2f×", evp / swiftCrypto), target: "—", met: nil)
        ]
    }

    /// The 32 key bytes of a managed database's key.
    static func rawKey(_ key: KeyLease) throws -> SecureBuffer {
        defer { key.release() }
        return try key.withRawKeyText { text in
            let digits = Array(text.dropFirst(2).dropLast())
            return SecureBuffer(count: 32) { output in
                for index in 0..<32 {
                    output[index] = UInt8(
                        String(decoding: digits[(2 * index)..<(2 * index + 2)], as: UTF8.self), radix: 16)!
                }
            }
        }
    }
}

/// The page steps with swift-crypto, for comparison only.
struct SwiftCryptoPages {
    let oldKey: SymmetricKey
    let newKey: SymmetricKey
    let oldMACKey: SymmetricKey
    let newMACKey: SymmetricKey
    let cipher: CipherSettings

    init(oldKey: SecureBuffer, newKey: SecureBuffer, salt: [UInt8], cipher: CipherSettings) {
        func macKey(_ key: SecureBuffer) -> SymmetricKey {
            key.withUnsafeBytes {
                PageAuthentication.hmacKeyBytes(from: $0, salt: salt, cipher: cipher).withUnsafeBytes {
                    SymmetricKey(data: $0)
                }
            }
        }
        self.oldKey = oldKey.withUnsafeBytes { SymmetricKey(data: $0) }
        self.newKey = newKey.withUnsafeBytes { SymmetricKey(data: $0) }
        oldMACKey = macKey(oldKey)
        newMACKey = macKey(newKey)
        self.cipher = cipher
    }

    func reencrypt(_ pages: inout [UInt8]) throws {
        switch cipher.effectiveHMACAlgorithm {
        case .sha1: try reencrypt(&pages, Insecure.SHA1.self)
        case .sha256: try reencrypt(&pages, SHA256.self)
        case .sha512: try reencrypt(&pages, SHA512.self)
        }
    }

    private func reencrypt<H: HashFunction>(_ pages: inout [UInt8], _: H.Type) throws {
        let (pageSize, reserve) = (cipher.pageSize, cipher.reservedBytesPerPage)
        let oldMAC = HMAC<H>(key: oldMACKey)
        let newMAC = HMAC<H>(key: newMACKey)
        var random = SystemRandomNumberGenerator()
        for number in 1...(pages.count / pageSize) {
            let base = (number - 1) * pageSize
            let start = base + (number == 1 ? max(cipher.plaintextHeaderSize, 16) : 0)
            let end = base + pageSize - reserve
            let pageNumber = withUnsafeBytes(of: UInt32(number).littleEndian) { Array($0) }
            var check = oldMAC
            check.update(data: pages[start..<(end + 16)])
            check.update(data: pageNumber)
            guard Array(check.finalize()) == Array(pages[(end + 16)..<(end + 16 + H.Digest.byteCount)]) else {
                throw DBKeyError(.databaseDamaged, "page \(number) fails its HMAC")
            }
            let plaintext = try AES._CBC.decrypt(
                pages[start..<end], using: oldKey, iv: try AES._CBC.IV(ivBytes: pages[end..<(end + 16)]),
                noPadding: true)
            for index in end..<(base + pageSize) { pages[index] = random.next() }
            let ciphertext = try AES._CBC.encrypt(
                plaintext, using: newKey, iv: try AES._CBC.IV(ivBytes: pages[end..<(end + 16)]), noPadding: true)
            pages.replaceSubrange(start..<end, with: ciphertext)
            var mac = newMAC
            mac.update(data: pages[start..<(end + 16)])
            mac.update(data: pageNumber)
            pages.replaceSubrange((end + 16)..<(end + 16 + H.Digest.byteCount), with: Array(mac.finalize()))
        }
    }
}
