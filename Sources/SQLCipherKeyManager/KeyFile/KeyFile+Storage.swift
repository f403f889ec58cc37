import Foundation
import Synchronization
import SystemPackage

extension KeyFile {
    /// Reads and validates a `.key` file.
    ///
    /// The file must be a regular file (not a symbolic link) owned by this user, with no group
    /// or other permissions and a single hard link, at most 64 KiB. It is never modified.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileMissing``,
    ///   ``DBKeyError/Code-swift.struct/keyFileInsecure``,
    ///   ``DBKeyError/Code-swift.struct/keyFileCorrupt``,
    ///   ``DBKeyError/Code-swift.struct/unsupportedFormat``, or ``DBKeyError/Code-swift.struct/io``.
    public static func read(from path: String) throws -> KeyFile {
        try read(from: path, cache: nil)
    }

    /// ``read(from:)``, returning the record `cache` parsed from this very file when the open
    /// file's identity (device, inode, size, modification and change times) is the one it had,
    /// and caching what it parses. The file's checks (owner, mode, links, size) run each time.
    static func read(from path: String, cache: KeyFileCache?) throws -> KeyFile {
        try ProtectedFile.read(
            at: path, maxSize: maximumSize, kind: "key file", missingCode: .keyFileMissing,
            // Without a cache, no lstat first: the open's fstat is the only look at the file.
            unlessKnown: cache.map { cache in
                { status in cache.keyFile(at: path, identity: KeyFileCache.Identity(status)) }
            },
            parse: { contents, status in
                let keyFile = try contents.withUnsafeBytes { try KeyFile(jsonBytes: $0, source: path) }
                cache?.store(keyFile, at: path, identity: KeyFileCache.Identity(status))
                return keyFile
            })
    }

    /// Replaces the `.key` file at `path` atomically and durably with mode 0600.
    ///
    /// A new file is written beside it, `fsync`ed and renamed over the old one; the directory is
    /// then `fsync`ed. A crash leaves the old file or the new one.
    ///
    /// - Parameters:
    ///   - path: The `.key` file's path.
    ///   - replacing: When `false`, fails instead of replacing a file already there.
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` (disk full, a file already there, …); the
    ///   old file is then intact.
    package func write(to path: String, replacing: Bool = true) throws {
        let data = try jsonData()
        try data.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path, replacing: replacing) }
    }
}

extension KeyFile {
    /// The size of this file's JSON in the largest state a key change can give it: with a
    /// `pending` record (one like its own current key when it has none, carrying the longest
    /// cipher settings an upgrade writes) and its MAC.
    func sizeWithKeyChangePending() throws -> Int {
        var largest = self
        if largest.pending == nil {
            var longestCipher = CipherSettings(
                pageSize: cipher.pageSize, sqlcipherVersion: String(repeating: "9", count: 64),
                salt: Array(repeating: 0, count: CipherSettings.saltByteCount), compatibility: 4,
                hmacAlgorithm: .sha512, kdfAlgorithm: .sha512)
            longestCipher.plaintextHeaderSize = CipherSettings.sharedContainerHeaderSize
            largest.pending = PendingOperation(
                operation: .rotate, encryptedDek: encryptedDek, kekId: kekId, kms: kms ?? "",
                version: version + 1,
                keyCheck: keyCheck ?? KeyCheck(bytes: Array(repeating: 0, count: KeyCheck.byteCount))!,
                startedAt: createdAt, cipher: longestCipher)
            largest.pending?.slots = slots
        }
        largest.format = largest.requiredFormat
        largest.mac = Array(repeating: 0, count: 32)
        return try largest.jsonData().count
    }

    /// Refuses, before anything is written, a file that would grow past ``maximumSize`` when a
    /// key change is pending: nothing could read it then, and a crash would strand the database.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration``.
    func requireRoomForKeyChanges(source: String) throws {
        let size = try sizeWithKeyChangePending()
        guard size <= KeyFile.maximumSize else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(source) would grow to \(size) bytes while a key change is pending, past the \(KeyFile.maximumSize / 1024) KiB a .key file may have; nothing was written. Use a shorter encryption context or fewer key slots.",
                path: source
            )
        }
    }
}

/// `.key` files parsed on earlier opens, by path, each with the identity of the file it came
/// from, so that a warm open does not parse the file again. Holds no secret (a `.key` holds
/// none). Never used for a key change: under the exclusive lock the file is always read again.
final class KeyFileCache: Sendable {
    static let shared = KeyFileCache()
    /// Past this many databases, the cache starts again (a fleet run opens each once).
    static let capacity = 256

    /// What tells one file from another at a path: a rewritten `.key` is a new file (a rename),
    /// and a file changed in place has new times.
    struct Identity: Hashable {
        let device: UInt64
        let inode: UInt64
        let size: Int64
        let times: [Int]

        init(_ status: Stat) {
            device = UInt64(status.rawValue.st_dev)
            inode = UInt64(status.rawValue.st_ino)
            size = status.size
            times = Platform.modificationAndChangeTimes(status)
        }
    }

    private struct Entry {
        let identity: Identity
        let keyFile: KeyFile
    }

    private let entries = Mutex<[String: Entry]>([:])
    /// The last record at each path whose MAC was checked with its data key.
    private let provenSeals = Mutex<[String: KeyFile]>([:])

    func keyFile(at path: String, identity: Identity) -> KeyFile? {
        entries.withLock { $0[path] }.flatMap { $0.identity == identity ? $0.keyFile : nil }
    }

    func store(_ keyFile: KeyFile, at path: String, identity: Identity) {
        entries.withLock { entries in
            if entries.count >= KeyFileCache.capacity { entries.removeAll() }
            entries[path] = Entry(identity: identity, keyFile: keyFile)
        }
    }

    /// Whether `keyFile`, field for field, is the record last proven at `path`.
    func isSealProven(_ keyFile: KeyFile, at path: String) -> Bool {
        provenSeals.withLock { $0[path] == keyFile }
    }

    /// Remembers that `keyFile`'s MAC was checked with the data key it records as current.
    func rememberSealProven(_ keyFile: KeyFile, at path: String) {
        provenSeals.withLock { proven in
            if proven.count >= KeyFileCache.capacity { proven.removeAll() }
            proven[path] = keyFile
        }
    }
}
