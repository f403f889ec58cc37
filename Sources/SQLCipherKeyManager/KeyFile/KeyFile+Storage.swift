import Foundation

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
        let contents = try ProtectedFile.read(
            at: path, maxSize: maximumSize, kind: "key file", missingCode: .keyFileMissing)
        return try contents.withUnsafeBytes { try KeyFile(jsonBytes: $0, source: path) }
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
    public func write(to path: String, replacing: Bool = true) throws {
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
