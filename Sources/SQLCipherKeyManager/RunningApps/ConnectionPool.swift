import Foundation
import Logging
import Synchronization

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
///   it runs beside other reads and the write. Readers refuse writes (`query_only`). A caller on
///   a thread of its own (not Swift's cooperative pool) can read synchronously
///   (``readSynchronously(_:)``), with no thread hand-off.
/// - A ``write(_:)`` runs in an `IMMEDIATE` transaction, one at a time;
///   ``writeWithoutTransaction(_:)`` runs outside one (pragmas, `VACUUM`).
/// - SQLite work runs on the package's own threads, never on Swift's cooperative pool.
/// - A task waiting for a connection can be cancelled: it throws `CancellationError`.
/// - A rotation by copy made in this process
///   (``DatabaseKeyManager/rotateKey(wait:dropUnreachableSlots:inPlace:progress:)``) holds the
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
public final class ConnectionPool: Sendable {
    /// The database file's path.
    public let databasePath: String
    /// The most readers open at once.
    public let maximumReaders: Int
    /// When the writer's commits reach the disk.
    public let synchronous: Synchronous

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
    /// Everything that changes, behind one lock: a read checks a connection out and in without a
    /// thread hand-off.
    private let state = Mutex(PoolState())

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
        state.withLock { $0.reopening = true }
        try await reopen(newKey: nil)
        let registration = KeyChangeParticipants.shared.register(Participant(pool: self), databasePath: databasePath)
        let watcher = rotationRequestInterval.map { interval in
            Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    // A pool released without close() stops answering.
                    guard let pool = self else { return }
                    await pool.answerRotationRequest()
                }
            }
        }
        state.withLock {
            $0.registration = registration
            $0.requestWatcher = watcher
        }
    }

    deinit {
        state.withLock { $0.requestWatcher?.cancel() }
    }

    // MARK: - Work

    /// Runs `body` with a reader, in a read transaction: every statement sees the same snapshot.
    ///
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws; `CancellationError` when the task is cancelled while it
    ///   waits for a reader; ``DBKeyError/Code-swift.struct/databaseClosed`` after ``close()``;
    ///   the errors of reopening after a key change (a KMS outage, the lock held elsewhere).
    public func read<Result: Sendable>(
        _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        try await run(.reader) { db in try db.inTransaction(.deferred) { try body(db) } }
    }

    /// Runs `body` with a reader on the calling thread, in a read transaction, as ``read(_:)``
    /// does: for a caller on a thread of its own, which it blocks while it waits for a reader.
    /// Never call it from Swift's cooperative pool (a task): the wait would block one of its
    /// few threads.
    ///
    /// - Returns: What `body` returns.
    /// - Throws: As ``read(_:)`` does, but for cancellation.
    public func readSynchronously<Result>(_ body: (DatabaseConnection) throws -> Result) throws -> Result {
        let pooled = try checkOutBlocking()
        defer { checkIn(pooled, .reader) }
        return try pooled.connection.inTransaction(.deferred) { try body(pooled.connection) }
    }

    /// Runs one statement with a reader and returns what `decode` makes of each row (see
    /// ``DatabaseConnection/fetch(_:arguments:_:)``), with no `BEGIN` or `COMMIT`: SQLite runs a
    /// lone statement in a read transaction of its own, so all its rows come from one snapshot,
    /// as in ``read(_:)``.
    ///
    /// ```swift
    /// let titles = try await pool.fetch("SELECT body FROM note ORDER BY id LIMIT ?", arguments: [100]) { row in
    ///     row.text(0) ?? ""
    /// }
    /// ```
    ///
    /// - Returns: The decoded rows, in order.
    /// - Throws: As ``read(_:)`` does; ``DBKeyError`` for SQL of more than one statement
    ///   (refused before it runs).
    public func fetch<Row: Sendable>(
        _ sql: String, arguments: [SQLValue] = [], _ decode: @escaping @Sendable (RowView) throws -> Row
    ) async throws -> [Row] {
        try await run(.reader) { db in try db.fetch(sql, arguments: arguments, decode) }
    }

    /// ``fetch(_:arguments:_:)`` on the calling thread, as ``readSynchronously(_:)`` runs: for a
    /// caller on a thread of its own, never from Swift's cooperative pool.
    ///
    /// - Returns: The decoded rows, in order.
    /// - Throws: As ``fetch(_:arguments:_:)`` does, but for cancellation.
    public func fetchSynchronously<Row>(
        _ sql: String, arguments: [SQLValue] = [], _ decode: (RowView) throws -> Row
    ) throws -> [Row] {
        let pooled = try checkOutBlocking()
        defer { checkIn(pooled, .reader) }
        return try pooled.connection.fetch(sql, arguments: arguments, decode)
    }

    /// Runs `body` with the writer, in an `IMMEDIATE` transaction: committed when it returns,
    /// rolled back when it throws.
    ///
    /// - Returns: What `body` returns.
    /// - Throws: As ``read(_:)`` does.
    public func write<Result: Sendable>(
        _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        try await run(.writer) { db in try db.inTransaction(.immediate) { try body(db) } }
    }

    /// Runs `body` with the writer outside a transaction, for what cannot run in one
    /// (`VACUUM`, some pragmas).
    ///
    /// - Returns: What `body` returns.
    /// - Throws: As ``read(_:)`` does.
    public func writeWithoutTransaction<Result: Sendable>(
        _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        try await run(.writer, body)
    }

    fileprivate enum Role {
        case reader, writer
    }

    /// Checks a connection out, runs `body` on the short-work lane and checks the connection
    /// in there: one hand-off to the lane and one back.
    private func run<Result: Sendable>(
        _ role: Role, _ body: @escaping @Sendable (DatabaseConnection) throws -> Result
    ) async throws -> Result {
        let pooled = try await checkOut(role)
        return try await BlockingExecutor.shared.run(.short) { [self] in
            defer { checkIn(pooled, role) }
            return try body(pooled.connection)
        }
    }

    private func checkOut(_ role: Role) async throws -> PooledConnection {
        while true {
            try Task.checkCancellation()
            var next = state.withLock { $0.next(role, maximumReaders: maximumReaders) }
            if case .wait = next {
                next = try await waitForTurn(role)
            }
            switch next {
            case .connection(let pooled):
                return pooled
            case .openReader(let key, let keyFile, let generation):
                do {
                    return try await BlockingExecutor.shared.run(.short) { [self] in
                        try makeConnection(key: key, keyFile: keyFile, role: .reader, generation: generation)
                    }
                } catch {
                    state.withLock { $0.readerNotOpened() }.forEach { $0.resume() }
                    throw error
                }
            case .reopen:
                // A reopen after a key change failed (a KMS outage, the lock held elsewhere):
                // try again, and tell this caller why it cannot.
                try await reopen(newKey: nil)
            case .closed:
                throw closedError()
            case .wait:
                continue
            }
        }
    }

    /// ``checkOut(_:)`` for a caller on its own thread: waits by blocking it.
    private func checkOutBlocking() throws -> PooledConnection {
        while true {
            let turn = DispatchSemaphore(value: 0)
            let next = state.withLock { state in
                let next = state.next(.reader, maximumReaders: maximumReaders)
                if case .wait = next { state.addWaiter(.thread(turn)) }
                return next
            }
            switch next {
            case .connection(let pooled):
                return pooled
            case .openReader(let key, let keyFile, let generation):
                do {
                    return try makeConnection(key: key, keyFile: keyFile, role: .reader, generation: generation)
                } catch {
                    state.withLock { $0.readerNotOpened() }.forEach { $0.resume() }
                    throw error
                }
            case .reopen:
                try waitBlocking { [self] in try await reopen(newKey: nil) }
            case .closed:
                throw closedError()
            case .wait:
                turn.wait()
            }
        }
    }

    /// Runs `work` in a task and blocks the calling thread (not one of the cooperative pool's)
    /// until it ends.
    private func waitBlocking(_ work: @escaping @Sendable () async throws -> Void) throws {
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Swift.Result<Void, any Error>>(.success(()))
        Task {
            do { try await work() } catch { outcome.withLock { $0 = .failure(error) } }
            done.signal()
        }
        done.wait()
        try outcome.withLock { $0 }.get()
    }

    private func checkIn(_ pooled: PooledConnection, _ role: Role) {
        let toClose = state.withLock { $0.checkIn(pooled, isWriter: role == .writer) }
        toClose?.connection.close()
    }

    /// Waits until a connection comes back or the pool's state changes, deciding again under the
    /// lock so that no wake-up is missed.
    private func waitForTurn(_ role: Role) async throws -> PoolState.Next {
        let id = state.withLock { $0.reserveWaiter() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let waiting = state.withLock { state -> Bool in
                    guard !Task.isCancelled,
                        case .wait = state.next(role, maximumReaders: maximumReaders, peek: true)
                    else { return false }
                    state.waiters[id] = .task(continuation)
                    return true
                }
                if !waiting {
                    // Cancelled before it waited, or its turn came: the loop decides again.
                    continuation.resume()
                }
            }
            return .wait
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.cancel()
        }
    }

    private func closedError() -> DBKeyError {
        DBKeyError(.databaseClosed, "The connection pool of \(databasePath) is closed.", path: databasePath)
    }

    // MARK: - Opening, pausing, closing

    /// Takes the shared lock (settling an interrupted key change), finds the key the `.key`
    /// records — `newKey` or the current one when either matches its key check, else through
    /// the KMS — and opens the writer. The caller set `reopening`.
    private func reopen(newKey: SecureBuffer?) async throws {
        defer { state.withLock { $0.endReopening() }.forEach { $0.resume() } }
        try database.opener.refuseSymbolicLink()
        let (lock, keyFile) = try await database.acquireSettled(wait: database.configuration.openWait)
        do {
            let current = state.withLock { $0.key }
            let known = [newKey, current].compactMap { $0 }.first { candidate in
                keyFile.keyCheck?.matches(candidate) == true
            }
            let key: SecureBuffer
            if let known {
                try database.keyStore.verifySeal(of: keyFile, with: known)
                key = known
            } else {
                key = try await database.unlocker.unwrapKey(of: keyFile)
            }
            let generation = state.withLock { $0.generation }
            let writer = try await BlockingExecutor.shared.run(.short) { [self] in
                try makeConnection(key: key, keyFile: keyFile, role: .writer, generation: generation)
            }
            let retired = state.withLock { $0.opened(writer: writer, lock: lock, key: key, keyFile: keyFile) }
            retired.forEach { $0.connection.close() }
            database.logger.debug("Opened the connection pool", metadata: ["version": "\(keyFile.version)"])
        } catch {
            lock.release()
            throw error
        }
    }

    /// Opens a connection keyed with `key` and the `.key`'s cipher settings: the writer in WAL
    /// mode with the pool's `synchronous`, a reader `query_only`.
    private func makeConnection(key: SecureBuffer, keyFile: KeyFile, role: Role, generation: Int) throws
        -> PooledConnection
    {
        let connection = try database.opener.openConnection(key: key, keyFile: keyFile)
        do {
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
        } catch {
            connection.close()
            throw error
        }
        return PooledConnection(connection, generation: generation)
    }

    /// Waits, polling, until `isDone` holds of the state or `deadline` passes; whether it does.
    private func drain(until deadline: ContinuousClock.Instant, _ isDone: @escaping (PoolState) -> Bool) async -> Bool {
        while !state.withLock({ isDone($0) }) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
        return state.withLock { isDone($0) }
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
        guard state.withLock({ $0.enter(.writesHeld, from: [.open]) }) else { return }
        guard await drain(until: deadline, { !$0.writerInUse && !$0.reopening }) else {
            state.withLock { $0.leave(.writesHeld, to: .open) }.forEach { $0.resume() }
            throw inUseError()
        }
        state.withLock { $0.closeWriter() }.close()
        database.logger.debug("Holding the connection pool's writes for a rotation")
    }

    /// Closes the pool for a key change (or for the swap of a rotation by copy): new work
    /// waits, running work finishes, every connection closes and the shared lock is let go.
    func pause(until deadline: ContinuousClock.Instant) async throws {
        let previous = state.withLock { state -> PoolState.Phase? in
            let previous = state.phase
            return state.enter(.paused, from: [.open, .writesHeld]) ? previous : nil
        }
        guard let previous else { return }
        guard await drain(until: deadline, { $0.inUse == 0 && !$0.reopening }) else {
            state.withLock { $0.leave(.paused, to: previous) }.forEach { $0.resume() }
            throw inUseError()
        }
        state.withLock { $0.closeConnections() }.close()
        database.logger.debug("Paused the connection pool for a key change")
    }

    func resume(newKey: SecureBuffer?) async {
        let resuming = state.withLock { state -> Bool in
            guard state.phase == .paused || state.phase == .writesHeld else { return false }
            state.phase = .open
            state.reopening = true
            return true
        }
        guard resuming else { return }
        do {
            try await reopen(newKey: newKey)
        } catch {
            // The next piece of work tries again and reports why it cannot.
            database.logger.debug("Reopening the connection pool failed", metadata: ["error": "\(error)"])
        }
    }

    /// Closes the pool: new work fails with ``DBKeyError/Code-swift.struct/databaseClosed``,
    /// running work finishes, then every connection is closed and the shared lock released.
    /// Later calls do nothing.
    public func close() async {
        let closing = state.withLock { state -> (registration: KeyChangeRegistration?, waiters: [PoolState.Waiter])? in
            guard state.phase != .closed else { return nil }
            state.phase = .closed
            state.requestWatcher?.cancel()
            defer { state.registration = nil }
            return (state.registration, state.takeWaiters())
        }
        guard let closing else { return }
        closing.registration?.cancel()
        closing.waiters.forEach { $0.resume() }
        _ = await drain(until: .now + .seconds(365 * 86_400)) { $0.inUse == 0 && !$0.reopening }
        state.withLock { state in
            defer {
                state.key = nil
                state.keyFile = nil
            }
            return state.closeConnections()
        }.close()
        database.logger.debug("Closed the connection pool")
    }

    // MARK: - Rotation requests

    /// Carries out an operator's rotation request, if there is one (``RotationRequest``).
    private func answerRotationRequest() async {
        guard state.withLock({ $0.phase == .open }) else { return }
        await RotationRequest.answer(database: database)
    }
}

/// A pool's connections, waiters and phase, changed only under its lock.
private struct PoolState {
    enum Phase {
        case open
        /// A rotation by copy is copying the database: reads go on, writes wait.
        case writesHeld
        /// Closed for a key change; work waits.
        case paused
        case closed
    }

    /// A caller waiting for its turn: a task, or a thread of its own.
    enum Waiter {
        case task(CheckedContinuation<Void, any Error>)
        case thread(DispatchSemaphore)

        func resume() {
            switch self {
            case .task(let continuation): continuation.resume()
            case .thread(let semaphore): semaphore.signal()
            }
        }

        func cancel() {
            switch self {
            case .task(let continuation): continuation.resume(throwing: CancellationError())
            case .thread(let semaphore): semaphore.signal()
            }
        }
    }

    /// What a caller asking for a connection does next.
    enum Next {
        case connection(PooledConnection)
        /// Opens a reader (counted already) with this key, under this generation.
        case openReader(SecureBuffer, KeyFile, Int)
        /// Reopens the pool (the caller now owns `reopening`).
        case reopen
        case wait
        case closed
    }

    var phase = Phase.open
    var key: SecureBuffer?
    /// The `.key` the connections were opened under.
    var keyFile: KeyFile?
    /// Whether a reopen is running; work waits for it.
    var reopening = false
    var lock: DatabaseLock?
    var writer: PooledConnection?
    var writerInUse = false
    var idleReaders: [PooledConnection] = []
    var openReaders = 0
    /// Connections handed out and not yet back, and readers being opened.
    var inUse = 0
    /// Bumped when the pool's key changes or its readers close; a reader opened under an
    /// earlier one is closed when it comes back.
    var generation = 0
    var waiters: [UInt64: Waiter] = [:]
    var nextWaiter: UInt64 = 0
    var registration: KeyChangeRegistration?
    var requestWatcher: Task<Void, Never>?

    /// Decides what a caller asking for `role` does, taking the connection when there is one
    /// (unless only peeking).
    mutating func next(_ role: ConnectionPool.Role, maximumReaders: Int, peek: Bool = false) -> Next {
        switch phase {
        case .closed: return .closed
        case .paused: return .wait
        case .writesHeld where role == .writer: return .wait
        case .open, .writesHeld: break
        }
        if reopening { return .wait }
        guard let key, let keyFile, writer != nil || phase == .writesHeld else {
            if !peek { reopening = true }
            return .reopen
        }
        switch role {
        case .writer:
            guard !writerInUse, let writer else { return .wait }
            if !peek {
                writerInUse = true
                inUse += 1
            }
            return .connection(writer)
        case .reader:
            if !idleReaders.isEmpty {
                guard !peek else { return .connection(idleReaders[idleReaders.count - 1]) }
                inUse += 1
                return .connection(idleReaders.removeLast())
            }
            guard openReaders < maximumReaders else { return .wait }
            if !peek {
                openReaders += 1
                inUse += 1
            }
            return .openReader(key, keyFile, generation)
        }
    }

    mutating func reserveWaiter() -> UInt64 {
        nextWaiter += 1
        return nextWaiter
    }

    mutating func addWaiter(_ waiter: Waiter) {
        waiters[reserveWaiter()] = waiter
    }

    mutating func takeWaiters() -> [Waiter] {
        defer { waiters = [:] }
        return Array(waiters.values)
    }

    /// A reader counted by ``next(_:maximumReaders:peek:)`` could not be opened.
    mutating func readerNotOpened() -> [Waiter] {
        openReaders -= 1
        inUse -= 1
        return takeWaiters()
    }

    /// Takes a connection back; returns one to close (a reader of an earlier generation, or
    /// any while the pool is not serving reads). Wakes every waiter.
    mutating func checkIn(_ pooled: PooledConnection, isWriter: Bool) -> PooledConnection? {
        inUse -= 1
        defer { takeWaiters().forEach { $0.resume() } }
        if isWriter {
            writerInUse = false
            return nil
        }
        if phase == .open || phase == .writesHeld, pooled.generation == generation, !pooled.connection.isClosed {
            idleReaders.append(pooled)
            return nil
        }
        openReaders -= 1
        return pooled
    }

    /// Moves to `phase` from one of `allowed`; whether it did.
    mutating func enter(_ phase: Phase, from allowed: Set<Phase>) -> Bool {
        guard allowed.contains(self.phase) else { return false }
        self.phase = phase
        return true
    }

    /// Moves back from `phase` (a key change the pool could not stop for) to `previous`.
    mutating func leave(_ phase: Phase, to previous: Phase) -> [Waiter] {
        if self.phase == phase { self.phase = previous }
        return takeWaiters()
    }

    mutating func endReopening() -> [Waiter] {
        reopening = false
        return takeWaiters()
    }

    /// Records a reopen's writer, lock and key; returns the idle readers to close when the key
    /// changed (readers kept through a change that did not end in a swap).
    mutating func opened(
        writer: PooledConnection, lock: DatabaseLock, key: SecureBuffer, keyFile: KeyFile
    ) -> [PooledConnection] {
        let retired = self.key.map { $0 != key } ?? false ? retireReaders() : []
        self.writer = writer
        self.lock = lock
        self.key = key
        self.keyFile = keyFile
        return retired
    }

    /// Takes the idle readers to close; those in use are closed as they come back.
    mutating func retireReaders() -> [PooledConnection] {
        defer {
            openReaders -= idleReaders.count
            idleReaders = []
            generation += 1
        }
        return idleReaders
    }

    /// Takes the writer to close and lets go of the shared lock.
    mutating func closeWriter() -> [PooledConnection] {
        defer {
            writer = nil
            lock?.release()
            lock = nil
        }
        return writer.map { [$0] } ?? []
    }

    /// Takes every idle connection to close and lets go of the lock.
    mutating func closeConnections() -> [PooledConnection] {
        retireReaders() + closeWriter()
    }
}

extension [PooledConnection] {
    func close() {
        for pooled in self { pooled.connection.close() }
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
