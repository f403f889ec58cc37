internal import COpenSSL
import Crypto
import Dispatch
import Synchronization
import SystemPackage

/// Re-encrypts an SQLCipher file under a new key page by page into another file, on every
/// core, without SQLite: what `PRAGMA rekey` does, without its rollback journal (which writes
/// every page twice) and on one thread.
///
/// Each page is checked against its HMAC under the old key, decrypted, encrypted under the new
/// key with a fresh random IV (the whole reserve is new random bytes, as SQLCipher writes it),
/// and given its HMAC under the new key (the page layout is described in
/// ``PageAuthentication``). Page 1's salt or plaintext header is copied as it is: the salt
/// stays, as with `PRAGMA rekey`. The page holding the byte at 1 GiB, which SQLite never
/// writes, is copied as it is.
///
/// The file is read and written in chunks of about 1 MiB, each by one worker at its own
/// offset, so the copy's pages keep their order and memory stays at a chunk per worker.
struct PageReencryption: Sendable {
    let cipher: CipherSettings

    /// The offset of SQLite's lock byte (`PENDING_BYTE`): the page holding it is never written.
    static let lockByteOffset = 0x4000_0000
    /// The bytes of a chunk: one read, one write, one entry of the checksum.
    static let chunkBytes = 1 << 20

    var pageSize: Int { cipher.pageSize }
    var pagesPerChunk: Int { max(1, Self.chunkBytes / cipher.pageSize) }

    /// Where page `number`'s encrypted bytes start: after page 1's salt or plaintext header.
    func contentStart(ofPage number: Int) -> Int {
        number == 1 ? max(cipher.plaintextHeaderSize, CipherSettings.saltByteCount) : 0
    }

    /// Whether page `number` is the one SQLite keeps for its lock byte and never writes.
    func isLockBytePage(_ number: Int) -> Bool {
        number == Self.lockByteOffset / pageSize + 1
    }

    /// Re-encrypts all `size` bytes of `source` into `destination` (an empty file) on up to
    /// `workers` threads, deriving the HMAC keys with the database's `salt`, and returns the
    /// copy's checksum (``checksum(ofChunk:firstPage:)`` over every chunk). The source is read
    /// through SQLite's own handle (``DatabaseFileReader``), so that no descriptor of DBKey's is
    /// closed on the database.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseDamaged`` naming the first page that
    ///   fails its HMAC (or a size that is not whole pages); ``DBKeyError/Code-swift.struct/io``
    ///   when reading or writing fails. The destination is then incomplete.
    func reencrypt(
        _ source: DatabaseFileReader, sourcePath: String, size: Int64,
        into destination: FileDescriptor, destinationPath: String,
        from oldKey: SecureBuffer, to newKey: SecureBuffer, salt: [UInt8], workers: Int
    ) throws -> [UInt8] {
        let pageCount = try pages(in: size, path: sourcePath)
        let chunkCount = (pageCount + pagesPerChunk - 1) / pagesPerChunk
        let state = Mutex(WorkState(digests: Array(repeating: [], count: chunkCount)))
        DispatchQueue.concurrentPerform(iterations: max(1, min(workers, chunkCount))) { _ in
            do {
                let crypto = try PageCrypto(oldKey: oldKey, newKey: newKey, salt: salt, cipher: cipher)
                try withChunkBuffers { chunk, plaintext in
                    while let index = state.withLock({ $0.claim(below: chunkCount) }) {
                        let firstPage = index * pagesPerChunk + 1
                        let count = min(pagesPerChunk, pageCount - index * pagesPerChunk)
                        let bytes = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<(count * pageSize)])
                        let offset = Int64(index * pagesPerChunk * pageSize)
                        try source.read(into: bytes, at: offset)
                        for page in 0..<count where !isLockBytePage(firstPage + page) {
                            try crypto.reencrypt(
                                UnsafeMutableRawBufferPointer(
                                    rebasing: bytes[(page * pageSize)..<((page + 1) * pageSize)]),
                                number: firstPage + page, plaintext: plaintext)
                        }
                        do {
                            try destination.writeAll(toAbsoluteOffset: offset, UnsafeRawBufferPointer(bytes))
                        } catch {
                            throw DBKeyError.io(error, "write the re-encrypted copy", destinationPath)
                        }
                        let digest = checksum(ofChunk: UnsafeRawBufferPointer(bytes), firstPage: firstPage)
                        state.withLock { $0.digests[index] = digest }
                    }
                }
            } catch {
                let failure =
                    error as? DBKeyError ?? DBKeyError(.io, "Re-encrypting \(sourcePath) failed: \(error).")
                state.withLock { $0.fail(failure) }
            }
        }
        return try state.withLock { state in
            if let failure = state.failure { throw failure }
            return Self.combine(state.digests)
        }
    }

    /// The checksum of a re-encrypted file, computed as ``reencrypt(_:sourcePath:size:into:destinationPath:from:to:salt:workers:)``
    /// computed it while writing: it tells a complete copy from a partial one.
    func checksum(ofFileAt path: String) throws -> (size: Int64, checksum: [UInt8]) {
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec, .noFollow])
            return try descriptor.closeAfter {
                let size = try descriptor.seek(offset: 0, from: .end)
                let pageCount = try pages(in: size, path: path)
                var digests: [[UInt8]] = []
                try withChunkBuffers { chunk, _ in
                    for firstPage in stride(from: 1, through: pageCount, by: pagesPerChunk) {
                        let count = min(pagesPerChunk, pageCount - firstPage + 1)
                        let bytes = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<(count * pageSize)])
                        try readFully(descriptor, into: bytes, at: Int64((firstPage - 1) * pageSize), path: path)
                        digests.append(checksum(ofChunk: UnsafeRawBufferPointer(bytes), firstPage: firstPage))
                    }
                }
                return (size, Self.combine(digests))
            }
        } catch {
            throw DBKeyError.io(error, "read the re-encrypted copy", path)
        }
    }

    /// SHA-256 over the HMAC of every page of a chunk (each covers its page's ciphertext, IV
    /// and number): cheap next to the encryption, and it changes with any page's content.
    func checksum(ofChunk chunk: UnsafeRawBufferPointer, firstPage: Int) -> [UInt8] {
        var hash = SHA256()
        let macStart = pageSize - cipher.reservedBytesPerPage + PageAuthentication.ivSize
        let macSize = cipher.effectiveHMACAlgorithm.byteCount
        for page in 0..<(chunk.count / pageSize) where !isLockBytePage(firstPage + page) {
            let start = page * pageSize + macStart
            hash.update(bufferPointer: UnsafeRawBufferPointer(rebasing: chunk[start..<(start + macSize)]))
        }
        return Array(hash.finalize())
    }

    private static func combine(_ digests: [[UInt8]]) -> [UInt8] {
        var hash = SHA256()
        for digest in digests { hash.update(data: digest) }
        return Array(hash.finalize())
    }

    private func pages(in size: Int64, path: String) throws -> Int {
        guard size > 0, size % Int64(pageSize) == 0 else {
            throw DBKeyError(
                .databaseDamaged,
                "\(path) is \(size) bytes, not a whole number of its \(pageSize)-byte pages: it was truncated or is not this database. Nothing was changed.",
                path: path)
        }
        return Int(size / Int64(pageSize))
    }

    /// A chunk buffer and a page of plaintext, the plaintext wiped before it is freed.
    private func withChunkBuffers<Result>(
        _ body: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) throws -> Result
    ) throws -> Result {
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: pagesPerChunk * pageSize, alignment: 16)
        let plaintext = UnsafeMutableRawBufferPointer.allocate(byteCount: pageSize, alignment: 16)
        defer {
            OPENSSL_cleanse(plaintext.baseAddress, plaintext.count)
            plaintext.deallocate()
            chunk.deallocate()
        }
        return try body(chunk, plaintext)
    }

    private func readFully(
        _ descriptor: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64, path: String
    ) throws {
        var done = 0
        while done < buffer.count {
            let count: Int
            do {
                count = try descriptor.read(
                    fromAbsoluteOffset: offset + Int64(done),
                    into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            } catch {
                throw DBKeyError.io(error, "read", path)
            }
            guard count > 0 else {
                throw DBKeyError(.databaseDamaged, "\(path) ended while it was being read.", path: path)
            }
            done += count
        }
    }

    /// The workers' shared state: the next chunk, the first failure, each chunk's checksum.
    private struct WorkState {
        var next = 0
        var failure: DBKeyError?
        var digests: [[UInt8]]

        mutating func claim(below count: Int) -> Int? {
            guard failure == nil, next < count else { return nil }
            defer { next += 1 }
            return next
        }

        mutating func fail(_ error: DBKeyError) {
            if failure == nil { failure = error }
        }
    }
}

/// One worker's OpenSSL contexts: AES-256-CBC under the old and the new key, and the page HMAC
/// under the keys derived from each. Not shared between threads. (Package-visible for
/// `Scripts/bench`, which measures it against swift-crypto.)
package final class PageCrypto {
    private let layout: PageReencryption
    private let decryptor: OpaquePointer
    private let encryptor: OpaquePointer
    private let oldMAC: OpaquePointer
    private let newMAC: OpaquePointer
    private let expectedMAC = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)

    /// Contexts for re-encrypting pages of a database with `cipher` and `salt` from `oldKey` to
    /// `newKey`.
    package init(oldKey: SecureBuffer, newKey: SecureBuffer, salt: [UInt8], cipher: CipherSettings) throws {
        self.layout = PageReencryption(cipher: cipher)
        func failure(_ what: String) -> DBKeyError {
            DBKeyError(.invalidConfiguration, "OpenSSL could not set up \(what) for re-encrypting pages.")
        }
        func cipherContext(_ key: SecureBuffer, encrypt: Bool) throws -> OpaquePointer {
            guard let context = EVP_CIPHER_CTX_new() else { throw failure("AES-256-CBC") }
            let initialized = key.withUnsafeBytes { key in
                EVP_CipherInit_ex(
                    context, EVP_aes_256_cbc(), nil, key.bindMemory(to: UInt8.self).baseAddress, nil,
                    encrypt ? 1 : 0)
            }
            guard initialized == 1, EVP_CIPHER_CTX_set_padding(context, 0) == 1 else {
                EVP_CIPHER_CTX_free(context)
                throw failure("AES-256-CBC")
            }
            return context
        }
        func macContext(_ key: SecureBuffer) throws -> OpaquePointer {
            let macKey = key.withUnsafeBytes { PageAuthentication.hmacKeyBytes(from: $0, salt: salt, cipher: cipher) }
            let digest: String =
                switch cipher.effectiveHMACAlgorithm {
                case .sha1: "SHA1"
                case .sha256: "SHA256"
                case .sha512: "SHA512"
                }
            guard
                let context = macKey.withUnsafeBytes({ key in
                    dbkey_hmac_new(digest, key.bindMemory(to: UInt8.self).baseAddress, key.count)
                })
            else { throw failure("HMAC") }
            return context
        }
        decryptor = try cipherContext(oldKey, encrypt: false)
        encryptor = try cipherContext(newKey, encrypt: true)
        oldMAC = try macContext(oldKey)
        newMAC = try macContext(newKey)
    }

    deinit {
        EVP_CIPHER_CTX_free(decryptor)
        EVP_CIPHER_CTX_free(encryptor)
        EVP_MAC_CTX_free(oldMAC)
        EVP_MAC_CTX_free(newMAC)
        expectedMAC.deallocate()
    }

    /// Re-encrypts one page in place, with `plaintext` (a page's size) as scratch.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseDamaged`` when the page fails its HMAC.
    package func reencrypt(_ page: UnsafeMutableRawBufferPointer, number: Int, plaintext: UnsafeMutableRawBufferPointer)
        throws
    {
        let cipher = layout.cipher
        let start = layout.contentStart(ofPage: number)
        let end = page.count - cipher.reservedBytesPerPage
        let macSize = cipher.effectiveHMACAlgorithm.byteCount
        let base = page.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let clear = plaintext.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let iv = base + end
        let storedMAC = iv + PageAuthentication.ivSize
        let authenticated = end + PageAuthentication.ivSize - start

        try mac(oldMAC, base + start, authenticated, number, into: expectedMAC.baseAddress!)
        guard CRYPTO_memcmp(expectedMAC.baseAddress, storedMAC, macSize) == 0 else {
            throw DBKeyError(
                .databaseDamaged,
                "Page \(number) of the database fails its HMAC under the current key: the page is damaged (or was changed outside SQLCipher). Nothing was changed; restore the database from a backup, or check it with dbkey verify."
            )
        }
        var written: Int32 = 0
        guard EVP_CipherInit_ex(decryptor, nil, nil, nil, iv, -1) == 1,
            EVP_CipherUpdate(decryptor, clear + start, &written, base + start, Int32(end - start)) == 1,
            RAND_bytes(iv, Int32(cipher.reservedBytesPerPage)) == 1,
            EVP_CipherInit_ex(encryptor, nil, nil, nil, iv, -1) == 1,
            EVP_CipherUpdate(encryptor, base + start, &written, clear + start, Int32(end - start)) == 1
        else {
            throw DBKeyError(.io, "OpenSSL failed to re-encrypt page \(number).")
        }
        try mac(newMAC, base + start, authenticated, number, into: storedMAC)
    }

    /// HMAC over `count` bytes and the page number (4 bytes, little endian), into `output`.
    private func mac(
        _ context: OpaquePointer, _ bytes: UnsafePointer<UInt8>, _ count: Int, _ number: Int,
        into output: UnsafeMutableRawPointer
    ) throws {
        var pageNumber = UInt32(number).littleEndian
        var length = 0
        let done = withUnsafeBytes(of: &pageNumber) { pageNumber in
            EVP_MAC_init(context, nil, 0, nil) == 1
                && EVP_MAC_update(context, bytes, count) == 1
                && EVP_MAC_update(context, pageNumber.bindMemory(to: UInt8.self).baseAddress, 4) == 1
                && EVP_MAC_final(context, output.assumingMemoryBound(to: UInt8.self), &length, 64) == 1
        }
        guard done else { throw DBKeyError(.io, "OpenSSL failed to compute the HMAC of page \(number).") }
    }
}
