import SystemPackage

import Foundation

/// An advisory lock on `<db>.key.lock` (`flock`), shared by every connection the manager opens
/// and exclusive during a rotation, so that a rotation never rekeys pages under a live
/// connection.
///
/// `flock` locks belong to the open file, so two connections in one process exclude a
/// rotation just as two processes do. The kernel drops the lock when the process dies, so a
/// crash never leaves the database locked.
/// Sendable as the pools hand it between their lock and their tasks; it is released once.
final class DatabaseLock: @unchecked Sendable {
    enum Mode {
        case shared, exclusive
    }

    private var descriptor: FileDescriptor?

    private init(descriptor: FileDescriptor?) {
        self.descriptor = descriptor
    }

    /// The lock a reader holds on a read-only file system with no lock file: nothing can change
    /// the key there, so there is nothing to exclude.
    static var readOnlyFileSystem: DatabaseLock { DatabaseLock(descriptor: nil) }

    deinit {
        release()
    }

    /// How long every acquisition polls at least.
    static let minimumWait: Duration = .milliseconds(200)

    /// Whether a process holds the database's lock now (shared or exclusive). The lock file is
    /// not created when it is missing.
    static func isHeld(databasePath: String) -> Bool {
        guard
            let descriptor = try? FileDescriptor.open(
                FilePath(DatabaseFiles(databasePath).lock), .readOnly, options: [.noFollow, .closeOnExec])
        else { return false }
        defer { try? descriptor.close() }
        return flock(descriptor.rawValue, LOCK_EX | LOCK_NB) != 0
    }

    /// Takes the lock, trying again every 10 ms for up to `wait` (at least ``minimumWait``),
    /// creating the lock file when it is missing. The exclusive lock first reserves the key
    /// change (``reserveKeyChange(databasePath:wait:)``).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when the lock is still held by
    ///   someone else after `wait`; ``DBKeyError/Code-swift.struct/io`` when the lock file
    ///   cannot be opened.
    static func acquire(_ mode: Mode, databasePath: String, wait: Duration) async throws -> DatabaseLock {
        if mode == .exclusive {
            let lock = try await reserveKeyChange(databasePath: databasePath, wait: wait)
            try await lock.takeExclusive(databasePath: databasePath, wait: wait)
            return lock
        }
        // Created when missing: never nil.
        return try await acquire(mode, databasePath: databasePath, wait: wait, creating: true)!
    }

    /// ``acquire(_:databasePath:wait:)``, or `nil` when the lock file is missing and `creating`
    /// is `false`: a reader passes `false`, so that reading a database that does not exist
    /// creates nothing, and a lock file on a read-only file system is opened read-only.
    static func acquire(_ mode: Mode, databasePath: String, wait: Duration, creating: Bool) async throws
        -> DatabaseLock?
    {
        guard let lock = try open(databasePath: databasePath, creating: creating) else { return nil }
        try await lock.take(mode, databasePath: databasePath, wait: wait)
        return lock
    }

    /// Opens the lock file, or returns `nil` when it is missing and `creating` is `false`.
    private static func open(databasePath: String, creating: Bool) throws -> DatabaseLock? {
        let path = DatabaseFiles(databasePath).lock
        do {
            // Read-write when it may be created; a reader opens it read-only, so that a lock file
            // on a read-only file system still locks (flock needs no write access).
            return DatabaseLock(
                descriptor: try FileDescriptor.open(
                    FilePath(path),
                    creating ? .readWrite : .readOnly,
                    options: creating ? [.create, .noFollow, .closeOnExec] : [.noFollow, .closeOnExec],
                    permissions: [.ownerReadWrite]
                ))
        } catch Errno.noSuchFileOrDirectory where !creating {
            return nil
        } catch {
            throw DBKeyError.io(error, "open the lock file", path)
        }
    }

    /// Takes the `flock` in `mode` on this lock's descriptor, polling as
    /// ``acquire(_:databasePath:wait:)`` describes.
    private func take(_ mode: Mode, databasePath: String, wait: Duration) async throws {
        guard let descriptor else { return }
        let operation = (mode == .shared ? LOCK_SH : LOCK_EX) | LOCK_NB
        let taken = try await poll(databasePath: databasePath, wait: wait) {
            do {
                try valueOrErrno { flock(descriptor.rawValue, operation) }
                return true
            } catch Errno.wouldBlock {
                return false
            }
        }
        guard !taken else { return }
        let message =
            mode == .shared
            ? "\(databasePath) is in use: a key rotation or migration is running on it. Try again when it is done\(wait > .zero ? "" : ", or wait for it (--wait SECONDS)")."
            // A pool holds the shared lock for as long as the app runs: waiting does not end that.
            : "\(databasePath) is in use: another connection or process has it open, or is rotating it. A running app's ConnectionPool holds it for as long as the app runs: ask the app to rotate (dbkey rotate --request, with answeringRotationRequests). Otherwise try again once the other process is closed\(wait > .zero ? "" : ", or wait for it (--wait SECONDS)")."
        throw DBKeyError(.databaseInUse, message)
    }

    /// The byte of the lock file that ``reserveKeyChange(databasePath:wait:)`` locks.
    private static let keyChangeByte: Int64 = 2

    /// Reserves the database's next key change, before its exclusive lock: a record lock on
    /// one byte of the lock file, which every holder of the exclusive lock takes first and keeps.
    ///
    /// A rotation by copy in this process lets the readers of its own pools and coordinators go
    /// on while the copy is made: they let go of the shared lock without closing, and the
    /// rotation then takes the exclusive lock. The reservation, taken before they let go and
    /// kept until they hold the shared lock again, keeps any other key change (in any process)
    /// from taking the exclusive lock in between and changing the file under those readers.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when another key change keeps
    ///   it after `wait`.
    static func reserveKeyChange(databasePath: String, wait: Duration) async throws -> DatabaseLock {
        try await lockingByte(
            keyChangeByte, databasePath: databasePath, wait: wait,
            busy:
                "\(databasePath) is in use: another key change (a rotation, an upgrade, a slot change) is running on it. Nothing was changed: try again when it is done\(wait > .zero ? "" : ", or wait for it (--wait SECONDS)")."
        )
    }

    /// Takes the exclusive `flock` on a lock that holds the key-change reservation.
    func takeExclusive(databasePath: String, wait: Duration) async throws {
        try await take(.exclusive, databasePath: databasePath, wait: wait)
    }

    /// Lets go of the exclusive `flock`, keeping the reservation, so that the pools and
    /// coordinators paused for the change take their shared locks again before another key
    /// change can start.
    func releaseExclusive() {
        guard let descriptor else { return }
        _ = flock(descriptor.rawValue, LOCK_UN)
    }

    /// Opens the lock file (creating it) and locks `byte` of it (an open-file-description
    /// record lock), polling every 10 ms for up to `wait` (at least ``minimumWait``).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` with `busy` when another holder
    ///   keeps it.
    private static func lockingByte(_ byte: Int64, databasePath: String, wait: Duration, busy: String) async throws
        -> DatabaseLock
    {
        let lock = try open(databasePath: databasePath, creating: true)!
        guard let descriptor = lock.descriptor,
            try await lock.poll(
                databasePath: databasePath, wait: wait, { try Platform.tryLockByte(descriptor, at: byte) })
        else { throw DBKeyError(.databaseInUse, busy, path: databasePath) }
        return lock
    }

    /// Calls `attempt` until it succeeds, every 10 ms for up to `wait`, and for at least
    /// ``minimumWait`` even with no wait asked for: a child process that another thread forked
    /// holds a copy of a released lock's descriptor until it execs, and that must not read as
    /// "in use". Whether it succeeded.
    private func poll(databasePath: String, wait: Duration, _ attempt: () throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + max(wait, DatabaseLock.minimumWait)
        while true {
            do {
                if try attempt() { return true }
            } catch {
                throw DBKeyError.io(error, "lock", DatabaseFiles(databasePath).lock)
            }
            guard ContinuousClock.now < deadline else { return false }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The byte of the lock file that ``acquireKeyWriter(databasePath:wait:)`` locks.
    private static let keyWriterByte: Int64 = 1

    /// Takes the `.key` writer's lock, beside the shared lock: a record lock on one byte of the
    /// lock file, so that the key changes that run beside open connections (a rewrap) take
    /// turns, each re-reading the `.key` under it, and none overwrites another's change. Those
    /// that hold the exclusive lock need no more: it excludes every other holder.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when another key change still
    ///   holds it after `wait`.
    static func acquireKeyWriter(databasePath: String, wait: Duration) async throws -> DatabaseLock {
        try await lockingByte(
            keyWriterByte, databasePath: databasePath, wait: wait,
            busy:
                "Another change of \(databasePath)'s .key (a rewrap) is running; nothing was changed. Try again when it is done, or wait for it (--wait SECONDS)."
        )
    }

    /// Whether another process holds one of SQLite's own locks on the database file (the POSIX
    /// record locks on its lock bytes, from `PENDING_BYTE`): evidence, not a guess, that a
    /// process outside DBKey has it open — asked only once DBKey's own connections are closed
    /// (a process never sees its own record locks).
    static func sqliteLockHeldElsewhere(databasePath: String) -> Bool {
        guard
            let descriptor = try? FileDescriptor.open(
                FilePath(databasePath), .readOnly, options: [.noFollow, .closeOnExec])
        else { return false }
        defer { try? descriptor.close() }
        var probe = flock()
        probe.l_type = Int16(F_WRLCK)
        probe.l_whence = Int16(SEEK_SET)
        // PENDING_BYTE, then the RESERVED byte and the SHARED range (510 bytes) after it.
        probe.l_start = 0x4000_0000
        probe.l_len = 512
        guard fcntl(descriptor.rawValue, F_GETLK, &probe) == 0 else { return false }
        return probe.l_type != Int16(F_UNLCK)
    }

    /// Releases the lock. Later calls do nothing.
    func release() {
        guard let descriptor else { return }
        // Closing the only descriptor of the open file releases the flock.
        try? descriptor.close()
        self.descriptor = nil
    }
}
