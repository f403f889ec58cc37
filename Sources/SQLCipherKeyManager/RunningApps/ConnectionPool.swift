import Foundation
import Logging

/// Connections for a running app: one writer and up to ``maximumReaders`` readers on a WAL
/// database, each keyed through the manager, which stay usable while the key is rotated.
///
/// Make one per database and keep it for the app's life:
///
/// ```swift
/// let pool = try await manager.openPool()
/// try await pool.write { db in
///     try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
///     try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
/// }
/// let count = try await pool.read { db in try db.fetchAll("SELECT count(*) FROM note")[0][0] }
/// try await manager.rotateKey()  // reads go on, writes wait; the pool reopens on the new key
/// await pool.close()
/// ```
///
/// - A ``read(_:)`` runs in a read transaction: every statement in it sees one snapshot, and
///   it runs beside other reads and the write. Readers refuse writes (`query_only`).
/// - A ``write(_:)`` runs in an `IMMEDIATE` transaction, one at a time;
///   ``writeWithoutTransaction(_:)`` runs outside one (pragmas, `VACUUM`).
/// - SQLite work runs on the package's own threads, never on Swift's cooperative pool.
/// - A task waiting for a connection can be cancelled: it throws `CancellationError`.
/// - A rotation by copy made in this process
///   (``LocalDbKeyManager/rotateKey(wait:dropUnreachableSlots:inPlace:progress:)``) holds the
///   pool's writes while the copy is made: new writes wait, the running one finishes, the writer
///   closes and the shared lock is let go; reads go on. Just before the copy is swapped in, reads
///   pause too (running ones finish), every connection closes, and the pool reopens on the new
///   key, handed over by the rotation. Any other key change (in place, an upgrade, a slot
///   change) pauses reads and writes for its whole length. Work that does not finish within the
///   configuration's `quiesceTimeout` fails the change with `database-in-use`, nothing changed.
///   The app sees latency, never an error and never a connection on the old key (see
///   <doc:RotatingWhileTheAppRuns>).
///
/// The pool holds the database's shared lock while it is open (as a connection does), so
/// another process cannot rotate the key; an operator's `dbkey rotate --request` asks the pool
/// to rotate instead (see ``RotationRequest``).
public actor ConnectionPool {
    /// The database file's path.
    public nonisolated let databasePath: String
    /// The most readers open at once.
    public nonisolated let maximumReaders: Int
    /// When the writer's commits reach the disk.
    public nonisolated let synchronous: Synchronous

    /// When a write's commit reaches the disk (SQLite's `synchronous` setting for the writer).
    ///
    /// The trade-off is a power loss's, not a crash's: after a crash of the app (SIGKILL
    /// included) every committed write is there in either mode, as the operating system still
    /// holds it. A power loss or a kernel crash can lose the last commits under `normal`, never
    /// the database's integrity, and never a key change (DBKey flushes those itself).
    public enum Synchronous: Sendable {
        /// Every commit is flushed to the disk before the write returns (`FULL`, the default):
        /// a write that returned survives a power loss.
        case full
        /// Commits are flushed at the WAL's checkpoints (`NORMAL`, as GRDB's pools set it):
        /// faster writes; a power loss may lose the commits since the last checkpoint.
        case normal

        var pragma: String {
            switch self {
            case .full: "PRAGMA synchronous = FULL"
            case .normal: "PRAGMA synchronous = NORMAL"
            }
        }
    }

    private let database: ManagedDatabase
    /// Whether the pool answers rotation requests (``RotationRequest``), checking this often.
    private let rotationRequestInterval: Duration?

    private enum State {
        case open
        /// A rotation by copy is copying the database: reads go on, writes wait.
        case writesHeld
        /// Closed for a key change; work waits.
        case paused
        case closed
    }

    private var state = State.open
    private var key: SecureBuffer?
    /// The `.key` the connections were opened under.
    private var keyFile: KeyFile?
    /// Whether a reopen is running; work waits for it.
    private var reopening = false
    private var lock: DatabaseLock?
    private var writer: PooledConnection?
    private var writerInUse = false
    private var idleReaders: [PooledConnection] = []
    /// Bumped when the pool's key changes; a reader opened under an earlier one is closed when
    /// it comes back.
    private var generation = 0
    private var openReaders = 0
    /// Connections handed out and not yet back, and readers being opened.
    private var inUse = 0
    private var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
    private var nextWaiter: UInt64 = 0
    private var registration: KeyChangeRegistration?
    private var requestWatcher: Task<Void, Never>?

    init(
        database: ManagedDatabase, maximumReaders: Int, rotationRequestInterval: Duration?, synchronous: Synchronous
    ) {
        self.database = database
        self.databasePath = database.databasePath
        self.maximumReaders = maximumReaders
        self.synchronous = synchronous
        self.rotationRequestInterval = rotationRequestInterval
    }

    /// Opens the writer (switching the database to WAL), takes the shared lock, and joins the
    /// database's key changes.
    func start() async throws {
        try await reopen(newKey: nil)
        registration = KeyChangeParticipants.shared.register(Participant(pool: self), databasePath: databasePath)
        if let interval = rotationRequestInterval {
            requestWatcher = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    // A pool released without close() stops answering.
                    guard let pool = self else { return }
                    await pool.answerRotationRequest()
                }
            }
        }
    }

    deinit {
        requestWatcher?.cancel()
    }

    // MARK: - Work

    /// Runs `body` with a reader, in a read transaction: every statement sees the same snapshot.
    ///
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws; `CancellationError` when the task is cancelled while it
    ///   waits for a reader; ``DBKeyError/Code-swift.struct/databaseClosed`` after ``close()``;
    ///   the errors of reopening after a key change (a KMS outage, the lock held elsewhere).
    public nonisolated func read<Result: Sendable>(
        _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        try await run(.reader) { db in try db.inTransaction(.deferred) { try body(db) } }
    }

    /// Runs `body` with the writer, in an `IMMEDIATE` transaction: committed when it returns,
    /// rolled back when it throws.
    ///
    /// - Returns: What `body` returns.
    /// - Throws: As ``read(_:)`` does.
    public nonisolated func write<Result: Sendable>(
        _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        try await run(.writer) { db in try db.inTransaction(.immediate) { try body(db) } }
    }

    /// Runs `body` with the writer outside a transaction, for what cannot run in one
    /// (`VACUUM`, some pragmas).
    ///
    /// - Returns: What `body` returns.
    /// - Throws: As ``read(_:)`` does.
    public nonisolated func writeWithoutTransaction<Result: Sendable>(
        _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        try await run(.writer, body)
    }

    private enum Role {
        case reader, writer
    }

    private nonisolated func run<Result: Sendable>(
        _ role: Role, _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        let pooled = try await checkOut(role)
        let outcome: Swift.Result<Result, any Error>
        do {
            outcome = .success(try await BlockingExecutor.shared.run(.short) { try body(pooled.connection) })
        } catch {
            outcome = .failure(error)
        }
        await checkIn(pooled, role)
        return try outcome.get()
    }

    private func checkOut(_ role: Role) async throws -> PooledConnection {
        while true {
            try Task.checkCancellation()
            switch state {
            case .closed:
                throw closedError()
            case .paused:
                try await waitForTurn()
                continue
            case .writesHeld where role == .writer:
                try await waitForTurn()
                continue
            case .open, .writesHeld:
                break
            }
            if reopening {
                try await waitForTurn()
                continue
            }
            guard let key, let keyFile, writer != nil || state == .writesHeld else {
                // A reopen after a key change failed (a KMS outage, the lock held elsewhere):
                // try again, and tell this caller why it cannot.
                try await reopen(newKey: nil)
                continue
            }
            switch role {
            case .writer:
                if !writerInUse, let writer {
                    writerInUse = true
                    inUse += 1
                    return writer
                }
            case .reader:
                if let reader = idleReaders.popLast() {
                    inUse += 1
                    return reader
                }
                if openReaders < maximumReaders {
                    openReaders += 1
                    inUse += 1
                    do {
                        return try await openConnection(
                            key: key, keyFile: keyFile, role: .reader, generation: generation)
                    } catch {
                        openReaders -= 1
                        inUse -= 1
                        wakeWaiters()
                        throw error
                    }
                }
            }
            try await waitForTurn()
        }
    }

    private func checkIn(_ pooled: PooledConnection, _ role: Role) {
        inUse -= 1
        switch role {
        case .writer:
            writerInUse = false
        case .reader:
            if state == .open || state == .writesHeld, pooled.generation == generation, !pooled.connection.isClosed {
                idleReaders.append(pooled)
            } else {
                openReaders -= 1
                pooled.connection.close()
            }
        }
        wakeWaiters()
    }

    /// Waits until a connection comes back or the pool's state changes.
    private func waitForTurn() async throws {
        nextWaiter += 1
        let id = nextWaiter
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                if Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                } else {
                    waiters[id] = continuation
                }
            }
        } onCancel: {
            Task { await self.cancelWaiter(id) }
        }
    }

    private func cancelWaiter(_ id: UInt64) {
        waiters.removeValue(forKey: id)?.resume(throwing: CancellationError())
    }

    private func wakeWaiters() {
        let woken = waiters
        waiters = [:]
        for continuation in woken.values {
            continuation.resume()
        }
    }

    private func closedError() -> DBKeyError {
        DBKeyError(.databaseClosed, "The connection pool of \(databasePath) is closed.", path: databasePath)
    }

    // MARK: - Opening, pausing, closing

    /// Takes the shared lock (settling an interrupted key change), finds the key the `.key`
    /// records — `newKey` or the current one when either matches its key check, else through
    /// the KMS — and opens the writer.
    private func reopen(newKey: SecureBuffer?) async throws {
        reopening = true
        inUse += 1
        defer {
            reopening = false
            inUse -= 1
            wakeWaiters()
        }
        try database.refuseSymbolicLink()
        let (lock, keyFile) = try await database.acquireSettled(wait: database.configuration.openWait)
        do {
            let known = [newKey, key].compactMap { $0 }.first { candidate in
                keyFile.keyCheck?.matches(candidate) == true
            }
            let key: SecureBuffer
            if let known {
                try keyFile.verifySeal(with: known, source: database.keyFilePath)
                key = known
            } else {
                key = try await database.unwrapKey(of: keyFile)
            }
            let writer = try await openConnection(key: key, keyFile: keyFile, role: .writer, generation: generation)
            if let previous = self.key, previous != key {
                // Readers kept through a change that did not end in a swap are on the old key
                // only if the key changed anyway: close them.
                retireReaders()
            }
            self.lock = lock
            self.key = key
            self.keyFile = keyFile
            self.writer = writer
            database.logger.debug("Opened the connection pool", metadata: ["version": "\(keyFile.version)"])
        } catch {
            lock.release()
            throw error
        }
    }

    private nonisolated func openConnection(
        key: SecureBuffer, keyFile: KeyFile, role: Role, generation: Int
    ) async throws -> PooledConnection {
        try await BlockingExecutor.shared.run(.short) { [database, synchronous] in
            let connection = try database.openConnection(key: key, keyFile: keyFile)
            try connection.guardAgainstKeyChanges()
            switch role {
            case .writer:
                let mode = try connection.fetchAll("PRAGMA journal_mode = WAL").first?[0].textValue
                guard mode == "wal" else {
                    throw DBKeyError(
                        .sqlite,
                        "\(database.databasePath) could not be switched to WAL mode (it answered \(mode ?? "nothing")).",
                        path: database.databasePath)
                }
                try connection.execute(synchronous.pragma)
            case .reader:
                try connection.execute("PRAGMA query_only = ON")
            }
            return PooledConnection(connection, generation: generation)
        }
    }

    /// Closes every connection and lets go of the lock; connections in use are closed as they
    /// come back.
    private func closeConnections() {
        retireReaders()
        closeWriter()
    }

    /// Closes the idle readers; those in use are closed as they come back.
    private func retireReaders() {
        for reader in idleReaders {
            reader.connection.close()
        }
        openReaders -= idleReaders.count
        idleReaders = []
        generation += 1
    }

    /// Closes the writer and lets go of the shared lock.
    private func closeWriter() {
        writer?.connection.close()
        writer = nil
        lock?.release()
        lock = nil
    }

    /// Waits, polling, until `isDone` or `deadline` passes; whether `isDone`.
    private func drain(until deadline: ContinuousClock.Instant, _ isDone: () -> Bool) async -> Bool {
        while !isDone() && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
        return isDone()
    }

    private func inUseError() -> DBKeyError {
        DBKeyError(
            .databaseInUse,
            "\(databasePath) is in use: work on its connection pool did not finish in time for the key change. Nothing was changed; try again when it is quieter, or allow longer (quiesceTimeout).",
            path: databasePath)
    }

    /// Stops writes for a rotation by copy: new writes wait, the running one finishes, the
    /// writer closes and the shared lock is let go. Reads go on.
    func holdWrites(until deadline: ContinuousClock.Instant) async throws {
        guard state == .open else { return }
        state = .writesHeld
        guard await drain(until: deadline, { !writerInUse && !reopening }) else {
            state = .open
            wakeWaiters()
            throw inUseError()
        }
        closeWriter()
        database.logger.debug("Holding the connection pool's writes for a rotation")
    }

    /// Closes the pool for a key change (or for the swap of a rotation by copy): new work
    /// waits, running work finishes, every connection closes and the shared lock is let go.
    func pause(until deadline: ContinuousClock.Instant) async throws {
        let previous = state
        guard previous == .open || previous == .writesHeld else { return }
        state = .paused
        guard await drain(until: deadline, { inUse == 0 }) else {
            state = previous
            wakeWaiters()
            throw inUseError()
        }
        closeConnections()
        database.logger.debug("Paused the connection pool for a key change")
    }

    func resume(newKey: SecureBuffer?) async {
        guard state == .paused || state == .writesHeld else { return }
        state = .open
        do {
            try await reopen(newKey: newKey)
        } catch {
            // The next piece of work tries again and reports why it cannot.
            database.logger.debug("Reopening the connection pool failed", metadata: ["error": "\(error)"])
        }
        wakeWaiters()
    }

    /// Closes the pool: new work fails with ``DBKeyError/Code-swift.struct/databaseClosed``,
    /// running work finishes, then every connection is closed and the shared lock released.
    /// Later calls do nothing.
    public func close() async {
        guard state != .closed else { return }
        state = .closed
        requestWatcher?.cancel()
        registration?.cancel()
        registration = nil
        wakeWaiters()
        _ = await drain(until: .now + .seconds(365 * 86_400)) { inUse == 0 }
        closeConnections()
        key = nil
        keyFile = nil
        database.logger.debug("Closed the connection pool")
    }

    // MARK: - Rotation requests

    /// Carries out an operator's rotation request, if there is one (``RotationRequest``).
    private func answerRotationRequest() async {
        guard state == .open else { return }
        await RotationRequest.answer(database: database)
    }
}

/// A connection owned by a pool, passed between the pool and the thread that runs work on it.
/// Only one piece of work holds it at a time.
final class PooledConnection: @unchecked Sendable {
    let connection: DatabaseConnection
    /// The pool's generation when it was opened.
    let generation: Int

    init(_ connection: DatabaseConnection, generation: Int) {
        self.connection = connection
        self.generation = generation
    }
}

extension ConnectionPool {
    /// The pool as a key-change participant, without keeping it alive.
    fileprivate struct Participant: KeyChangeParticipant {
        weak var pool: ConnectionPool?

        func holdWrites(until deadline: ContinuousClock.Instant) async throws {
            try await pool?.holdWrites(until: deadline)
        }

        func suspend(until deadline: ContinuousClock.Instant) async throws {
            try await pool?.pause(until: deadline)
        }

        func resume(newKey: SecureBuffer?) async {
            await pool?.resume(newKey: newKey)
        }
    }
}
