import SystemPackage

import Foundation

/// Reading and writing files that hold key material: `.key` files and master key files.
///
/// Reads refuse what ssh refuses for a private key — a symbolic link, anything but a regular
/// file, a file owned by another user, a file group or others can access, and (because another
/// name could change it behind our back) a file with more than one hard link. Writes never
/// touch the existing file: a new file is created with mode 0600 from the start, written,
/// `fsync`ed, renamed over the old one, and the directory `fsync`ed.
package enum ProtectedFile {
    /// Reads the whole file into secure memory after checking it is safe to trust.
    ///
    /// - Parameters:
    ///   - kind: What the file is, for messages ("key file", "master key file").
    ///   - missingCode: The code thrown when the file does not exist.
    /// - Throws: `missingCode`, ``DBKeyError/Code-swift.struct/keyFileInsecure``,
    ///   ``DBKeyError/Code-swift.struct/keyFileCorrupt`` (too large), or
    ///   ``DBKeyError/Code-swift.struct/io``. The file is never modified.
    package static func read(
        at path: String,
        maxSize: Int,
        kind: String,
        missingCode: DBKeyError.Code
    ) throws -> SecureBuffer {
        try read(at: path, maxSize: maxSize, kind: kind, missingCode: missingCode) { contents, _ in contents }
    }

    /// ``read(at:maxSize:kind:missingCode:)``, parsing the contents with `parse` (given the open
    /// file's status too); when `known` returns a value for the file's status (an `lstat`,
    /// checked as trustworthy first), that value, without opening the file.
    static func read<Result>(
        at path: String,
        maxSize: Int,
        kind: String,
        missingCode: DBKeyError.Code,
        unlessKnown known: ((Stat) -> Result?)? = nil,
        parse: (SecureBuffer, Stat) throws -> Result
    ) throws -> Result {
        // Anything but a regular file is left to the open below, which says what it is.
        if let known, let status = try? FilePath(path).stat(followTargetSymlink: false), status.type == .regular {
            try checkTrustworthy(status, path: path, kind: kind, maxSize: maxSize)
            if let result = known(status) { return result }
        }
        let descriptor: FileDescriptor
        do {
            // O_NONBLOCK so that a FIFO planted at the path cannot make the open hang.
            descriptor = try FileDescriptor.open(
                FilePath(path),
                .readOnly,
                options: [.noFollow, .closeOnExec, .nonBlocking]
            )
        } catch Errno.noSuchFileOrDirectory {
            throw DBKeyError(
                missingCode, "The \(kind) \(path) does not exist.", errno: .noSuchFileOrDirectory, path: path)
        } catch Errno.tooManySymbolicLinkLevels {
            throw DBKeyError(
                .keyFileInsecure,
                "The \(kind) \(path) is a symbolic link; key files are read only directly. Replace the link with the file it points to (cp --remove-destination \"$(readlink -f \(path))\" \(path)).",
                errno: .tooManySymbolicLinkLevels,
                path: path
            )
        } catch let error as Errno {
            throw DBKeyError.io(error, "open the \(kind)", path)
        }
        return try descriptor.closeAfter {
            let status: Stat
            do {
                status = try descriptor.stat()
            } catch {
                throw DBKeyError.io(error, "inspect the \(kind)", path)
            }
            try checkTrustworthy(status, path: path, kind: kind, maxSize: maxSize)
            return try parse(try readAll(descriptor, expectedSize: Int(status.size), path: path, kind: kind), status)
        }
    }

    /// Replaces (or creates) the file at `path` with `bytes`, atomically and durably.
    ///
    /// A crash at any moment leaves either the old file or the new one, never a mixture, and a
    /// file that exists after this returns survives a power loss.
    ///
    /// - Parameter replacing: When `false`, fails with `EEXIST` instead of replacing a file that
    ///   is already there (two processes creating the same master key: exactly one wins).
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` (disk full, permission denied, …); the
    ///   existing file is then untouched and no temporary file is left behind.
    ///   ``DBKeyError/Code-swift.struct/keyChangePending`` when the new file is in place but its
    ///   directory could not be flushed.
    package static func writeAtomically(_ bytes: UnsafeRawBufferPointer, to path: String, replacing: Bool = true) throws
    {
        let target = FilePath(path)
        let directory = target.removingLastComponent()
        let temporary = FilePath("\(path).tmp.\(UInt64.random(in: 0...UInt64.max))")
        do {
            let descriptor = try FileDescriptor.open(
                temporary,
                .writeOnly,
                options: [.create, .exclusiveCreate, .noFollow, .closeOnExec],
                permissions: [.ownerReadWrite]
            )
            do {
                try descriptor.closeAfter {
                    _ = try descriptor.writeAll(bytes)
                    try descriptor.synchronize()
                }
                if replacing {
                    try valueOrErrno { rename(temporary.string, target.string) }
                } else {
                    // link() fails with EEXIST instead of replacing: first writer wins.
                    try valueOrErrno { link(temporary.string, target.string) }
                    // A file left with two names would be refused (one hard link only): take
                    // the new one back if the temporary name cannot go.
                    do {
                        try valueOrErrno { unlink(temporary.string) }
                    } catch {
                        _ = unlink(target.string)
                        throw error
                    }
                }
            } catch {
                _ = unlink(temporary.string)
                throw error
            }
        } catch let error as Errno {
            throw DBKeyError.io(error, "write", path)
        }
        // From here on the new file is what every reader sees: a failure is not "not written".
        do {
            try synchronizeDirectory(directory)
        } catch {
            throw DBKeyError(
                .keyChangePending,
                "\(path) was written and is in effect, but its directory could not be flushed to disk (\(error)): until the disk is flushed, a power loss could bring back the file's previous version. Keep what that version needs (an old KEK or master key) until dbkey verify succeeds on the database.",
                errno: error as? Errno, path: path)
        }
    }

    /// Makes a directory's entries (a rename, a new file) durable.
    static func synchronizeDirectory(_ directory: FilePath) throws {
        // The parent of a bare file name is the working directory.
        let descriptor = try FileDescriptor.open(
            directory.isEmpty ? "." : directory, .readOnly, options: [.directory, .closeOnExec])
        try descriptor.closeAfter { try descriptor.synchronize() }
    }

    /// Refuses a file that is not regular, not owned by this user, open to group or others,
    /// hard-linked elsewhere, or larger than `maxSize`.
    private static func checkTrustworthy(_ status: Stat, path: String, kind: String, maxSize: Int) throws {
        guard status.type == .regular else {
            throw DBKeyError(.keyFileInsecure, "The \(kind) \(path) is not a regular file.")
        }
        let owner = status.userID.rawValue
        let me = geteuid()
        guard owner == me else {
            throw DBKeyError(
                .keyFileInsecure,
                me == 0
                    ? "The \(kind) \(path) belongs to uid \(owner), the user that runs the app, not to root: run dbkey as that user (sudo -u '#\(owner)' dbkey …). Do not chown it to root: the app would lose it."
                    : "The \(kind) \(path) is owned by uid \(owner), not by this user (uid \(me)). Run as its owner (the user that runs the app); if the owner itself is wrong, give it back to the app's user with chown."
            )
        }
        guard status.size <= Int64(maxSize) else {
            throw DBKeyError(
                .keyFileCorrupt,
                "The \(kind) \(path) is \(status.size) bytes, more than the \(maxSize / 1024) KiB allowed: it is not a DBKey \(kind)."
            )
        }
        let mode = status.permissions.rawValue & 0o777
        guard mode & 0o077 == 0 else {
            throw DBKeyError(
                .keyFileInsecure,
                "The \(kind) \(path) can be accessed by group or others (mode \(String(mode, radix: 8))). Restrict it to its owner: chmod 600 \(path)."
            )
        }
        guard status.linkCount == 1 || (status.linkCount == 2 && isInterruptedWrite(path, status)) else {
            throw DBKeyError(
                .keyFileInsecure,
                "The \(kind) \(path) has \(status.linkCount) hard links, so another name can change it. Give it a single link: cp -p \(path) \(path).new && mv \(path).new \(path)."
            )
        }
    }

    /// Whether the file's second name is the temporary of a ``writeAtomically(_:to:replacing:)``
    /// that was stopped between its `link` and its `unlink`: `<path>.tmp.N`, beside it, the same
    /// file. That name is as private as the file (same owner, mode 0600, same directory), and
    /// the next key change removes it.
    private static func isInterruptedWrite(_ path: String, _ status: Stat) -> Bool {
        let file = FilePath(path)
        let directory = file.removingLastComponent()
        let prefix = (file.lastComponent?.string ?? "") + ".tmp."
        let names =
            (try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory.string)) ?? []
        return names.contains { name in
            guard name.hasPrefix(prefix), let other = try? directory.appending(name).stat(followTargetSymlink: false)
            else { return false }
            return other.inode == status.inode && other.deviceID == status.deviceID
        }
    }

    private static func readAll(_ descriptor: FileDescriptor, expectedSize: Int, path: String, kind: String) throws
        -> SecureBuffer
    {
        var readCount = 0
        let buffer = try SecureBuffer(count: expectedSize) { destination in
            while readCount < destination.count {
                let chunk: Int
                do {
                    chunk = try descriptor.read(
                        into: UnsafeMutableRawBufferPointer(rebasing: destination[readCount...]))
                } catch {
                    throw DBKeyError.io(error, "read the \(kind)", path)
                }
                if chunk == 0 { break }
                readCount += chunk
            }
        }
        guard readCount == expectedSize else {
            throw DBKeyError(.keyFileCorrupt, "The \(kind) \(path) changed size while it was read; try again.")
        }
        return buffer
    }
}

/// Runs a system call that returns -1 and sets errno on failure, retrying on `EINTR`.
@discardableResult
func valueOrErrno<Value: FixedWidthInteger>(_ call: () -> Value) throws(Errno) -> Value {
    while true {
        let value = call()
        if value != -1 { return value }
        let error = Errno(rawValue: Platform.errno)
        if error != .interrupted { throw error }
    }
}

extension FileDescriptor {
    /// Flushes the file's data and metadata to the device (`fsync`).
    func synchronize() throws(Errno) {
        try valueOrErrno { fsync(rawValue) }
    }
}

extension DBKeyError {
    /// An error for a failed file system call, saying what was being done and to which file.
    static func io(_ error: any Error, _ action: String, _ path: String) -> DBKeyError {
        guard let errno = error as? Errno else {
            return error as? DBKeyError
                ?? DBKeyError(
                    .io, "Cannot \(action) \(path): \(error).", path: path, underlying: error)
        }
        let advice =
            switch errno {
            case .noSpace: " The disk is full: free space and try again."
            case .permissionDenied, .notPermitted: " Check the permissions of the file and its directory."
            case .readOnlyFileSystem: " The file system is read-only."
            default: ""
            }
        return DBKeyError(
            .io, "Cannot \(action) \(path): \(errno).\(advice)", errno: errno, path: path, underlying: errno)
    }
}
