import Foundation
import SystemPackage

/// The database side of the default rotation: every page re-encrypted into
/// `<db>.dbkey-rotating` (``PageReencryption``) while SQLite's write lock is held on the
/// database, and that copy renamed over the database once the `.key` records it.
///
/// The write lock is held by a connection from before the first page is read until after the
/// rename, so that no SQLite handle, not even one outside the manager, can write to the file
/// being replaced: such a write would go to the old file and be lost. Readers go on beside it
/// (in WAL mode and, with a `RESERVED` lock, in rollback mode) until the swap; the file is read
/// through the lock holder's own SQLite file handle (``DatabaseFileReader``), so that the copy
/// never closes a descriptor of the database under them.
final class CopyRotation: @unchecked Sendable {
    private let database: ManagedDatabase
    /// The connection holding SQLite's write lock.
    private let holder: DatabaseConnection
    /// The database file, read through `holder`'s handle.
    private let source: DatabaseFileReader
    private var released = false
    /// The database's size, once SQLite's write lock is held.
    private(set) var size: Int64 = 0
    /// The database file's inode when the copy began, and whether the copy has replaced it.
    private let replacedInode: Inode?
    private var swapped = false

    var copyPath: String { database.files.rotationCopy }

    /// Opens the database with `key`, which proves the key before anything else is done (a
    /// failure says why it does not open), and rolls back a hot journal under it.
    private init(database: ManagedDatabase, key: SecureBuffer, keyFile: KeyFile) throws {
        self.database = database
        replacedInode = try? FilePath(database.databasePath).stat().inode
        holder = try database.opener.openConnection(key: key, keyFile: keyFile)
        do {
            source = try DatabaseFileReader(holder)
            try holder.keepWALWhenClosing()
        } catch {
            holder.close()
            throw error
        }
    }

    /// Opens the connection that will hold SQLite's write lock through the copy, with the
    /// current key: the rotation's proof that the key opens the database, before the KMS is
    /// asked for a new one. Refused first when there is no room for a copy.
    static func open(_ database: ManagedDatabase, keyFile: KeyFile, key: SecureBuffer) async throws -> CopyRotation {
        // A copy left by an earlier run was removed when the change began (changingKey).
        try database.requireRoomForCopy()
        return try await BlockingExecutor.shared.run(.short) {
            try CopyRotation(database: database, key: key, keyFile: keyFile)
        }
    }

    /// Takes SQLite's write lock with every page of the WAL in the database file: `PASSIVE`
    /// checkpoints (which do not wait for readers) until the readers holding older snapshots
    /// have ended theirs, then `BEGIN IMMEDIATE` — in rollback mode a `RESERVED` lock, so that
    /// readers go on and no writer starts. A commit between the checkpoint and the lock
    /// (`PRAGMA data_version` moved) starts it over. The WAL is not emptied: readers may be
    /// using it. It goes at the swap, when they have closed; what it holds is then in the
    /// database file, and on disk under the old key only in the file replaced.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when another handle keeps the
    ///   write lock, or a read keeps the WAL from being copied back by `deadline`.
    private func lockWithWALCopiedBack(until deadline: ContinuousClock.Instant) throws {
        while true {
            let before = try holder.dataVersion()
            let (frames, copied) = try holder.checkpointWithoutWaiting()
            // -1: not in WAL mode.
            if frames <= 0 || copied == frames {
                try holder.execute("BEGIN IMMEDIATE")
                if try holder.dataVersion() == before { return }
                try holder.execute("ROLLBACK")
            }
            guard ContinuousClock.now < deadline else {
                throw DBKeyError(
                    .databaseInUse,
                    "\(database.databasePath) is in use: a read kept an older snapshot for longer than the key change waits (quiesceTimeout), so its WAL could not be copied into the database. Nothing was changed; try again when it is quieter.",
                    path: database.databasePath)
            }
            usleep(1_000)
        }
    }

    /// Locks the database and writes its re-encrypted copy, flushed to the disk, on the
    /// long-work lane. Readers of the database go on meanwhile.
    ///
    /// - Returns: The record the journal keeps; the lock stays held.
    /// - Throws: Before anything is journaled; the copy is removed and the lock let go.
    func makeCopy(
        keyFile: KeyFile, from currentKey: SecureBuffer, to newKey: SecureBuffer,
        progress: (@Sendable (KeyChangeProgress) -> Void)?
    ) async throws -> RotationCopy {
        let cipher = keyFile.cipher
        let total = (try? FilePath(database.databasePath).stat().size) ?? 0
        let reporter = reportProgress(of: [copyPath], total: total, phase: .rekeying, to: progress)
        defer { reporter?.cancel() }
        let deadline = ContinuousClock.now + database.configuration.quiesceTimeout
        return try await BlockingExecutor.shared.run(.long) { [self] in
            do {
                try lockWithWALCopiedBack(until: deadline)
                size = try source.size()
                try database.reach(.copyingPages)
                let checksum = try writeCopy(
                    PageReencryption(cipher: cipher), from: currentKey, to: newKey,
                    salt: try cipher.salt ?? readSalt())
                return RotationCopy(
                    name: FilePath(copyPath).lastComponent?.string ?? copyPath, size: size, checksum: checksum)
            } catch {
                abandon()
                throw error
            }
        }
    }

    /// The salt at the start of the file (older `.key` files do not record it).
    private func readSalt() throws -> [UInt8] {
        var salt = [UInt8](repeating: 0, count: CipherSettings.saltByteCount)
        try salt.withUnsafeMutableBytes { try source.read(into: $0, at: 0) }
        return salt
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
            if let mode = try? FilePath(database.databasePath).stat().permissions.rawValue {
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

    /// Renames the copy over the database and flushes the directory, on the short-work lane.
    /// Every other connection of this process on the database must be closed
    /// (``ManagedDatabase/closeReadersForSwap()``).
    ///
    /// The lock holder, the last handle on the file replaced, stays open until ``close()``:
    /// closing it frees the old file, and the file system's journal then makes every `fsync`
    /// wait for that (a quarter of a second for a GB) — the `.key`'s among them, while the app's
    /// readers wait. Left open, it touches only the old file: it leaves the files named like its
    /// WAL and WAL index, by now the new file's, in place when it closes
    /// (``DatabaseConnection/keepWALWhenClosing()``).
    func swapIn() async throws {
        try await BlockingExecutor.shared.run(.short) { [self] in
            do {
                try database.reach(.swappingDatabase)
                try database.files.replaceDatabase(with: copyPath, action: "rename the re-encrypted copy over")
                swapped = true
            } catch {
                release()
                throw error
            }
        }
    }

    /// Closes the lock holder on the short-work lane, and with it the old file and the old key's
    /// last copy in SQLCipher: after the key change, once the app's readers have reopened.
    ///
    /// The file replaced is cut down 32 MB at a time first: freed at once at the last close, a
    /// GB held the file system's journal for a quarter of a second, and the app's readers (whose
    /// WAL index pages are file pages too) with it.
    func close() async {
        try? await BlockingExecutor.shared.run(.short) { [self] in
            shrinkReplacedFile()
            release()
        }
    }

    /// Cuts the file the copy replaced to nothing in steps, through the holder's handle — only
    /// once the database's path names another file.
    private func shrinkReplacedFile() {
        guard swapped, !released, let replacedInode,
            let current = try? FilePath(database.databasePath).stat().inode, current != replacedInode,
            var remaining = try? source.size()
        else { return }
        let step: Int64 = 32 << 20
        while remaining > 0 {
            remaining = max(0, remaining - step)
            guard (try? source.truncate(to: remaining)) != nil else { return }
        }
    }

    /// Lets the lock go and removes the copy: the rotation stops before anything is journaled.
    func abandon() {
        release()
        DatabaseFiles.removeDatabase(at: copyPath)
    }

    /// Ends SQLite's transaction and closes the connection.
    func release() {
        guard !released else { return }
        released = true
        try? holder.execute("ROLLBACK")
        holder.close()
    }

    deinit { release() }
}

extension ManagedDatabase {
    /// Refuses a rotation by copy when the disk or the process's file-size limit has no room for
    /// a copy of the database, before anything is written.
    func requireRoomForCopy() throws {
        let room = files.roomForRotation()
        let limited = [room.free, room.fileSizeLimit].compactMap { $0 }.min()
        guard let limited, limited < room.databaseSize + UInt64(KeyFile.maximumSize) else { return }
        throw DBKeyError(
            .io,
            "Rotating \(databasePath) writes a re-encrypted copy of it (\(String(format: "%.1f", Double(room.databaseSize) / 1_000_000)) MB) beside it, and there is room for \(String(format: "%.1f", Double(limited) / 1_000_000)) MB (free disk space or the process's file-size limit). Nothing was changed: make room, or rotate in place (dbkey rotate --in-place), which needs a journal of about the same size.",
            errno: .noSpace, path: databasePath)
    }
}
