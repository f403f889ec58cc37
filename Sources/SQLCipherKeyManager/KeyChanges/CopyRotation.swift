import Foundation
import SystemPackage

/// The database side of the default rotation: every page re-encrypted into
/// `<db>.dbkey-rotating` (``PageReencryption``) while SQLite's own exclusive lock is held on the
/// database, and that copy renamed over the database once the `.key` records it.
///
/// The lock is held by a connection from before the first page is read until after the rename,
/// so that no SQLite handle, not even one outside the manager, can write to the file being
/// replaced: such a write would go to the old file and be lost.
final class CopyRotation: @unchecked Sendable {
    private let database: ManagedDatabase
    /// The connection holding SQLite's lock; closed before `source`.
    private let holder: DatabaseConnection
    /// The database file, read directly. Closed only after `holder`: closing any descriptor of a
    /// file drops every POSIX lock the process holds on it, SQLite's among them.
    private let source: FileDescriptor
    private var released = false
    /// The database's size.
    let size: Int64

    static func copyPath(of databasePath: String) -> String { databasePath + ".dbkey-rotating" }
    var copyPath: String { CopyRotation.copyPath(of: database.databasePath) }

    /// Opens the database with `key`, rolls back a hot journal, empties the WAL, and takes
    /// SQLite's exclusive lock.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when another handle keeps the
    ///   lock or writes to the WAL; what opening throws.
    private init(database: ManagedDatabase, key: SecureBuffer, keyFile: KeyFile) throws {
        self.database = database
        let path = database.databasePath
        do {
            source = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec, .noFollow])
        } catch {
            throw DBKeyError.io(error, "open", path)
        }
        do {
            // The first read rolls back a hot journal, under the current key.
            holder = try database.openConnection(key: key, keyFile: keyFile)
        } catch {
            try? source.close()
            throw error
        }
        do {
            try Migration(database: database).checkpointForSwap(holder)
            try holder.execute("BEGIN EXCLUSIVE")
            // In WAL mode the transaction holds the write lock: the WAL must still be empty,
            // or a page committed there would stay behind with the old file.
            if let wal = try? FilePath(path + "-wal").stat(), wal.size > 0 {
                throw DBKeyError(
                    .databaseInUse,
                    "Another process wrote to \(path) while it was being locked: stop it and rotate again.",
                    path: path)
            }
            size = try source.seek(offset: 0, from: .end)
        } catch {
            holder.close()
            try? source.close()
            throw error
        }
    }

    /// Locks the database and writes its re-encrypted copy, flushed to the disk, on the
    /// long-work lane.
    ///
    /// - Returns: The copy in progress (the lock still held) and the record the journal keeps.
    /// - Throws: Before anything is journaled; the copy is removed.
    static func makeCopy(
        of database: ManagedDatabase, keyFile: KeyFile, from currentKey: SecureBuffer, to newKey: SecureBuffer,
        progress: (@Sendable (KeyChangeProgress) -> Void)?
    ) async throws -> (CopyRotation, RotationCopy) {
        let path = database.databasePath
        let copyPath = copyPath(of: path)
        let cipher = keyFile.cipher
        // Read now: reading the file later, while SQLite holds its lock, would drop that lock.
        // A copy left by an earlier run was removed when the change began (changingKey).
        let salt = try cipher.salt ?? database.readSalt()
        try database.requireRoomForCopy()
        let total = (try? FilePath(path).stat().size) ?? 0
        let reporter = reportProgress(of: [copyPath], total: total, phase: .rekeying, to: progress)
        defer { reporter?.cancel() }
        return try await BlockingExecutor.shared.run(.long) {
            let rotation = try CopyRotation(database: database, key: currentKey, keyFile: keyFile)
            do {
                let checksum = try rotation.writeCopy(
                    PageReencryption(cipher: cipher), from: currentKey, to: newKey, salt: salt)
                let record = RotationCopy(
                    name: FilePath(copyPath).lastComponent?.string ?? copyPath, size: rotation.size,
                    checksum: checksum)
                return (rotation, record)
            } catch {
                rotation.release()
                database.removeDatabaseFiles(at: copyPath)
                throw error
            }
        }
    }

    private func writeCopy(
        _ reencryption: PageReencryption, from currentKey: SecureBuffer, to newKey: SecureBuffer, salt: [UInt8]
    ) throws -> [UInt8] {
        let copy: FileDescriptor
        do {
            copy = try FileDescriptor.open(
                FilePath(copyPath), .writeOnly, options: [.create, .exclusiveCreate, .noFollow, .closeOnExec],
                permissions: [.ownerReadWrite])
        } catch {
            throw DBKeyError.io(error, "create", copyPath)
        }
        return try copy.closeAfter {
            // The copy becomes the database: it keeps the database's permissions.
            if let mode = try? source.stat().permissions.rawValue {
                _ = fchmod(copy.rawValue, mode_t(mode & 0o777))
            }
            let checksum = try reencryption.reencrypt(
                source, sourcePath: database.databasePath, size: size, into: copy, destinationPath: copyPath,
                from: currentKey, to: newKey, salt: salt, workers: ProcessInfo.processInfo.activeProcessorCount)
            do {
                try copy.synchronize()
            } catch {
                throw DBKeyError.io(error, "flush", copyPath)
            }
            return checksum
        }
    }

    /// Renames the copy over the database and flushes the directory, then lets the lock go, on
    /// the short-work lane. Releases the lock whatever happens.
    func swapIn() async throws {
        try await BlockingExecutor.shared.run(.short) { [self] in
            defer { release() }
            try database.reach(.swappingDatabase)
            try database.replaceDatabase(with: copyPath, action: "rename the re-encrypted copy over")
        }
    }

    /// Ends SQLite's transaction and closes the connection, then the descriptor.
    func release() {
        guard !released else { return }
        released = true
        try? holder.execute("ROLLBACK")
        holder.close()
        try? source.close()
    }

    deinit { release() }
}

extension ManagedDatabase {
    /// Removes the database's journal, WAL and WAL index, which describe the file being replaced
    /// (the caller emptied or rolled them back), then renames `copy` over the database and
    /// flushes the directory, so that the rename survives a power loss.
    func replaceDatabase(with copy: String, action: String) throws {
        for suffix in ["-wal", "-shm", "-journal"] {
            _ = unlink(databasePath + suffix)
        }
        do {
            try valueOrErrno { rename(copy, databasePath) }
            let directory = FilePath(databasePath).removingLastComponent()
            try ProtectedFile.synchronizeDirectory(directory.isEmpty ? "." : directory)
        } catch {
            throw DBKeyError.io(error, action, databasePath)
        }
    }

    /// Refuses a rotation by copy when the disk or the process's file-size limit has no room for
    /// a copy of the database, before anything is written.
    func requireRoomForCopy() throws {
        let room = roomForRotation()
        let limited = [room.free, room.fileSizeLimit].compactMap { $0 }.min()
        guard let limited, limited < room.databaseSize + UInt64(KeyFile.maximumSize) else { return }
        throw DBKeyError(
            .io,
            "Rotating \(databasePath) writes a re-encrypted copy of it (\(String(format: "%.1f", Double(room.databaseSize) / 1_000_000)) MB) beside it, and there is room for \(String(format: "%.1f", Double(limited) / 1_000_000)) MB (free disk space or the process's file-size limit). Nothing was changed: make room, or rotate in place (dbkey rotate --in-place), which needs a journal of about the same size.",
            errno: .noSpace, path: databasePath)
    }
}
