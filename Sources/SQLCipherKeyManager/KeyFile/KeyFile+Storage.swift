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
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` (disk full, …); the old file is then intact.
    public func write(to path: String) throws {
        let data = try jsonData()
        try data.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path) }
    }
}
