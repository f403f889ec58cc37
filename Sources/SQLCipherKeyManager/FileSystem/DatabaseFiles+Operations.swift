import Foundation
import Logging
import SystemPackage

/// What is done to the files of ``DatabaseFiles``' table: created, read, checked, replaced and
/// removed here, and nowhere else.
extension DatabaseFiles {
    /// Whether anything is at `path` (a symbolic link counts, and is not followed).
    static func exists(_ path: String) -> Bool {
        (try? FilePath(path).stat(followTargetSymlink: false)) != nil
    }

    /// A database file's first 16 bytes: SQLCipher's salt (or a plaintext SQLite header).
    static func readSalt(of path: String) throws -> [UInt8] {
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            return try descriptor.closeAfter {
                var salt = [UInt8](repeating: 0, count: CipherSettings.saltByteCount)
                let count = try salt.withUnsafeMutableBytes { try descriptor.read(fromAbsoluteOffset: 0, into: $0) }
                return Array(salt.prefix(count))
            }
        } catch {
            throw DBKeyError.io(error, "read the header of", path)
        }
    }

    /// The database file's first 16 bytes (``readSalt(of:)``).
    func readSalt() throws -> [UInt8] {
        try Self.readSalt(of: database)
    }

    /// Creates a database file empty with mode 0600 (SQLite gives its journals the same mode),
    /// failing if anything is already at the path.
    static func createEmptyFile(at path: String) throws {
        do {
            let descriptor = try FileDescriptor.open(
                FilePath(path),
                .writeOnly,
                options: [.create, .exclusiveCreate, .noFollow, .closeOnExec],
                permissions: [.ownerReadWrite]
            )
            try descriptor.close()
        } catch Errno.fileExists {
            throw DBKeyError(
                .alreadyInitialized,
                "\(path) already exists. To bring an existing database under management, migrate it (dbkey migrate).",
                errno: .fileExists, path: path
            )
        } catch {
            throw DBKeyError.io(error, "create", path)
        }
    }

    /// Flushes a file's data to the disk.
    static func synchronize(_ path: String) throws {
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            try descriptor.closeAfter { try descriptor.synchronize() }
        } catch {
            throw DBKeyError.io(error, "flush", path)
        }
    }

    /// Removes a database file and its journals.
    static func removeDatabase(at path: String) {
        for file in [path] + DatabaseFiles(path).sqliteFiles {
            _ = unlink(file)
        }
    }

    /// What an in-place rotation needs beside the database (its journal: about the database's
    /// size, with an eighth to spare) and what it has: free disk space and the process's
    /// file-size limit.
    func roomForRotation() -> (databaseSize: UInt64, needed: UInt64, free: UInt64?, fileSizeLimit: UInt64?) {
        let size = UInt64((try? FilePath(database).stat().size) ?? 0)
        let directory = FilePath(database).removingLastComponent()
        let free =
            (try? FileManager.default.attributesOfFileSystem(forPath: directory.isEmpty ? "." : directory.string))?[
                .systemFreeSize] as? UInt64
        return (size, size + size / 8, free, Platform.fileSizeLimit)
    }

    /// Removes the database's journal, WAL and WAL index, which describe the file being replaced
    /// (the caller copied them into it or rolled them back), then renames `copy` over the
    /// database and flushes the directory, so that the rename survives a power loss.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` before the rename when one of them cannot
    ///   be removed: a WAL left beside the new file would be replayed into it on the next open,
    ///   its pages under the old key.
    func replaceDatabase(with copy: String, action: String) throws {
        for file in sqliteFiles {
            do {
                try valueOrErrno { unlink(file) }
            } catch Errno.noSuchFileOrDirectory {
                continue
            } catch {
                throw DBKeyError.io(error, "remove", file)
            }
        }
        do {
            try valueOrErrno { rename(copy, database) }
            let directory = FilePath(database).removingLastComponent()
            try ProtectedFile.synchronizeDirectory(directory.isEmpty ? "." : directory)
        } catch {
            throw DBKeyError.io(error, action, database)
        }
    }

    /// Finishes the placement a killed backup or restore left: its `.key` written, its flushed
    /// copy beside it, no database yet. Called under the database's lock (shared by an open,
    /// exclusive by a restore), so no placement is running.
    ///
    /// - Returns: Whether a placement was completed.
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` when the copy cannot be linked in.
    func completeInterruptedPlacement() throws -> Bool {
        guard !Self.exists(database), Self.exists(keyFile) else { return false }
        for copy in [restoringCopy, backupCopy] where Self.exists(copy) {
            do {
                // Another opener may have linked it a moment ago: then it is in place.
                if link(copy, database) != 0 && errno != EEXIST {
                    throw Errno(rawValue: errno)
                }
                _ = unlink(copy)
                try ProtectedFile.synchronizeDirectory(FilePath(database).removingLastComponent())
            } catch {
                throw DBKeyError.io(error, "finish placing the backup copy at", database)
            }
            return true
        }
        return false
    }

    /// Whether the database's rollback journal is one SQLite would never roll back: empty, or
    /// its first byte zero (SQLite's test of a hot journal), as a write stopped before its header
    /// was complete leaves it. `nil` when there is none.
    func rollbackJournalIsUnusable() -> Bool? {
        guard
            let descriptor = try? FileDescriptor.open(
                FilePath(rollbackJournal), .readOnly, options: [.noFollow, .closeOnExec])
        else { return nil }
        defer { try? descriptor.close() }
        var first: UInt8 = 0
        let count = (try? withUnsafeMutableBytes(of: &first) { try descriptor.read(into: $0) }) ?? 1
        return count == 0 || first == 0
    }

    // MARK: - What a killed process left

    /// Removes a rollback journal SQLite would never roll back (see ``rollbackJournalIsUnusable()``),
    /// which an open leaves where it is. Under the exclusive lock, and only when no process
    /// outside DBKey holds one of SQLite's locks: then no writer is starting a journal.
    func removeUnusableRollbackJournal(logger: Logger) {
        guard rollbackJournalIsUnusable() == true, !DatabaseLock.sqliteLockHeldElsewhere(databasePath: database)
        else { return }
        if unlink(rollbackJournal) == 0 {
            logger.debug("Removed a rollback journal SQLite would not roll back")
        }
    }

    /// Removes the `<db>.key.tmp.<number>` files that a process killed in the middle of a
    /// `.key` write left behind. Called under the exclusive lock, when no writer can hold one;
    /// only regular files of exactly that name are removed, never a link or anything else.
    ///
    /// - Returns: How many were removed.
    @discardableResult
    func removeStaleTemporaryKeyFiles(logger: Logger) -> Int {
        let keyPath = FilePath(keyFile)
        let directory = keyPath.removingLastComponent()
        guard let prefix = keyPath.lastComponent.map({ $0.string + ".tmp." }),
            let names = try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory.string)
        else { return 0 }
        var removed = 0
        for name in names where name.hasPrefix(prefix) {
            let suffix = name.dropFirst(prefix.count)
            guard !suffix.isEmpty, suffix.count <= 20, suffix.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                continue
            }
            let path = directory.appending(name)
            guard let status = try? path.stat(followTargetSymlink: false), status.type == .regular,
                status.userID.rawValue == geteuid()
            else { continue }
            if unlink(path.string) == 0 { removed += 1 }
        }
        if removed > 0 {
            logger.debug("Removed temporary .key files a killed process left", metadata: ["count": "\(removed)"])
        }
        return removed
    }

    /// Removes the copy an upgrade or a rotation killed before its journal was written left
    /// beside the database (a database's worth of disk). Called under a lock with no change
    /// pending: the exclusive lock every copy's maker holds cannot be held by anyone now, and
    /// no record names the copy. One `stat` each when there is none.
    func removeStaleCopies(logger: Logger) {
        for copyPath in keyChangeCopies.map(\.path) where Self.exists(copyPath) {
            Self.removeDatabase(at: copyPath)
            logger.debug("Removed the copy of an interrupted key change", metadata: ["path": "\(copyPath)"])
        }
    }
}
