import Dispatch
import Foundation
import GRDB
import SQLCipherKeyManager
import Synchronization

/// A GRDB `DatabasePool` on a database whose key DBKey manages, kept right across every key
/// change.
///
/// GRDB keys each connection it opens with its `Configuration`'s `prepareDatabase` functions. A
/// rotation replaces the database file and its key, and GRDB cannot reopen a connection: no
/// connection of the old pool may stay. `KeyedDatabasePool` holds the current pool and is
/// registered with the manager as a ``KeyChangeCoordinator``. During a rotation by copy made in
/// this process (``DatabaseKeyManager/rotateKey(wait:dropUnreachableSlots:inPlace:progress:)``,
/// or an operator's `dbkey rotate --request` it answers), reads go on while the copy is made
/// and writes wait; just before the swap it lets running work finish and closes the pool. Before
/// any other key change (in place, an upgrade, a slot change) it closes the pool at once. After
/// the change, it opens a new pool keyed with the new key. Work started meanwhile waits, and
/// never fails for the change. Observations started with
/// ``observe(_:scheduling:onError:onChange:)`` start again on the new pool.
///
/// Don't keep the `DatabasePool` that ``read(_:)`` and ``write(_:)`` use: go through this type.
public final class KeyedDatabasePool: KeyChangeCoordinator, Sendable {
    /// The manager of the database.
    public let manager: DatabaseKeyManager
    private let configuration: Configuration
    private let prepareDatabase: (@Sendable (Database) throws -> Void)?
    private let state = Mutex(State())

    private struct State {
        var pool: DatabasePool?
        var key: KeyLease?
        /// A key change holds the pool closed.
        var paused = false
        /// A rotation by copy holds the writes; reads go on.
        var writesHeld = false
        var closed = false
        /// Work running on the current pool, and how much of it writes.
        var running = 0
        var runningWrites = 0
        var waiting: [CheckedContinuation<Void, Never>] = []
        var observations: [Int: KeyedObservation] = [:]
        var nextObservation = 0
        var registration: KeyChangeRegistration?
        var requestAnswering: Task<Void, Never>?
    }

    /// Opens a GRDB pool on the manager's database, keyed with its data key (the key and the
    /// database are created first when neither exists).
    ///
    /// - Parameters:
    ///   - configuration: GRDB's configuration. A `busyMode` of `.immediateError` (GRDB's
    ///     default) becomes a 30-second timeout, so that a write during a key change waits.
    ///     Add `prepareDatabase` functions with `prepareDatabase` instead: those of the
    ///     configuration run before the key is applied.
    ///   - prepareDatabase: Run on every connection once it is keyed.
    ///   - answeringRotationRequests: How often to look for an operator's
    ///     `dbkey rotate --request` and carry it out; `nil` to answer none.
    public init(
        manager: DatabaseKeyManager,
        configuration: Configuration = Configuration(),
        prepareDatabase: (@Sendable (Database) throws -> Void)? = nil,
        answeringRotationRequests: Duration? = nil
    ) async throws {
        self.manager = manager
        var configuration = configuration
        if case .immediateError = configuration.busyMode {
            configuration.busyMode = .timeout(30)
        }
        self.configuration = configuration
        self.prepareDatabase = prepareDatabase
        try await openPool(replacingClosed: false)
        let registration = manager.register(self)
        let requestAnswering = answeringRotationRequests.map { interval in
            Task { [manager] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    await manager.answerRotationRequest()
                }
            }
        }
        state.withLock {
            $0.registration = registration
            $0.requestAnswering = requestAnswering
        }
    }

    /// Reads in a snapshot of the database, on one of the pool's reader connections.
    public func read<T: Sendable>(_ value: @Sendable (Database) throws -> T) async throws -> T {
        let pool = try await enter(writing: false)
        defer { leave(writing: false) }
        return try await pool.read(value)
    }

    /// Writes in a transaction, on the pool's writer connection.
    public func write<T: Sendable>(_ updates: @Sendable (Database) throws -> T) async throws -> T {
        let pool = try await enter(writing: true)
        defer { leave(writing: true) }
        return try await pool.write(updates)
    }

    /// Writes outside of a transaction, with no reader running: GRDB's
    /// `barrierWriteWithoutTransaction`.
    public func barrierWriteWithoutTransaction<T: Sendable>(_ updates: @Sendable (Database) throws -> T)
        async throws -> T
    {
        let pool = try await enter(writing: true)
        defer { leave(writing: true) }
        return try await pool.barrierWriteWithoutTransaction(updates)
    }

    /// Runs a migrator's migrations that have not run yet.
    public func migrate(_ migrator: DatabaseMigrator) async throws {
        let pool = try await enter(writing: true)
        defer { leave(writing: true) }
        try migrator.migrate(pool)
    }

    /// Starts `observation` on the current pool, and again on each new pool after a key change
    /// (it then delivers the current value first, as any observation's start does).
    ///
    /// - Returns: The observation; it runs until cancelled.
    public func observe<Reducer: ValueReducer>(
        _ observation: ValueObservation<Reducer>,
        scheduling scheduler: some ValueObservationScheduler & Sendable = .async(
            onQueue: DispatchQueue(label: "DBKeyGRDB.observation")),
        onError: @escaping @Sendable (any Error) -> Void,
        onChange: @escaping @Sendable (Reducer.Value) -> Void
    ) -> KeyedObservation {
        let observation = KeyedObservation { pool in
            observation.start(in: pool, scheduling: scheduler, onError: onError, onChange: onChange)
        }
        let (identifier, pool) = state.withLock { state in
            state.nextObservation += 1
            state.observations[state.nextObservation] = observation
            return (state.nextObservation, state.paused ? nil : state.pool)
        }
        observation.owner = (self, identifier)
        if let pool { observation.start(on: pool) }
        return observation
    }

    /// Lets running work finish, closes the pool and ends the registration; later work throws.
    ///
    /// - Throws: ``DBKeyError`` with ``DBKeyError/Code-swift.struct/wrongKey`` when the
    ///   database no longer opens with its key: it was rekeyed outside DBKey's journal (GRDB's
    ///   `changePassphrase`, `PRAGMA rekey`). Change keys with the manager only.
    public func close() async throws {
        let (registration, requestAnswering) = state.withLock { state in
            state.closed = true
            return (state.registration, state.requestAnswering)
        }
        requestAnswering?.cancel()
        registration?.cancel()
        await drain(until: .now + .seconds(365 * 86_400)) { $0.running == 0 }
        defer { resumeWaiting() }
        try closePool()
    }

    // MARK: - KeyChangeCoordinator

    /// `true`: reads go on while a rotation's copy is made.
    public var readsGoOnDuringRotation: Bool { true }

    /// Holds new writes, lets the running ones finish, and lets go of the shared lock; GRDB's
    /// readers go on, and the key keys the ones GRDB opens meanwhile. (GRDB's writer connection
    /// stays open, idle: it holds no lock outside a transaction, and no transaction starts.)
    public func closeWritersForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        state.withLock { $0.writesHeld = true }
        guard await drain(until: deadline, { $0.runningWrites == 0 }) else { throw stillRunning("A GRDB write") }
        state.withLock { $0.key }?.releaseLockForRotation()
    }

    public func closeForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        state.withLock { $0.paused = true }
        guard await drain(until: deadline, { $0.running == 0 }) else { throw stillRunning("GRDB work") }
        try closePool()
    }

    /// The error of a key change that gave up waiting for `work` on the pool.
    private func stillRunning(_ work: String) -> DBKeyError {
        DBKeyError(
            .databaseInUse,
            "\(work) on \(manager.databasePath) was still running when the key change gave up waiting.",
            path: manager.databasePath)
    }

    public func reopenAfterKeyChange() async {
        // A failure (the KMS unreachable) leaves no pool: the next work opens it, or throws.
        try? await openPool(replacingClosed: true)
        state.withLock {
            $0.paused = false
            $0.writesHeld = false
        }
        resumeWaiting()
    }

    // MARK: - The pool's life

    private func openPool(replacingClosed: Bool) async throws {
        let key = try await manager.leaseKey()
        var configuration = configuration
        configuration.prepareDatabase { db in
            guard let handle = db.sqliteConnection else {
                throw DBKeyError(.invalidConfiguration, "GRDB gave no SQLite handle to key.")
            }
            try key.apply(to: handle)
        }
        if let prepareDatabase {
            configuration.prepareDatabase(prepareDatabase)
        }
        let pool: DatabasePool
        do {
            pool = try DatabasePool(path: manager.databasePath, configuration: configuration)
        } catch {
            key.release()
            throw error
        }
        let observations = state.withLock { state -> [KeyedObservation]? in
            guard state.pool == nil, !state.closed, replacingClosed || !state.paused else { return nil }
            state.pool = pool
            state.key = key
            return Array(state.observations.values)
        }
        guard let observations else {
            try? pool.close()
            key.release()
            return
        }
        for observation in observations {
            observation.start(on: pool)
        }
    }

    private func closePool() throws {
        let (pool, key, observations) = state.withLock { state in
            defer {
                state.pool = nil
                state.key = nil
            }
            return (state.pool, state.key, Array(state.observations.values))
        }
        for observation in observations {
            observation.stop()
        }
        do {
            try pool?.close()
        } catch {
            key?.release()
            throw error
        }
        // Proves the key still opens the database: a key changed behind the journal is
        // reported here, when the pool closes, not at some later launch.
        try key?.checkAndRelease()
    }

    /// Waits until `isDone` holds of the state, or until `deadline`; whether it does.
    @discardableResult
    private func drain(until deadline: ContinuousClock.Instant, _ isDone: (State) -> Bool) async -> Bool {
        while !state.withLock({ isDone($0) }) {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(2))
        }
        return true
    }

    /// The pool to run work on, once no key change holds it; opened again when the last
    /// reopen failed.
    private func enter(writing: Bool) async throws -> DatabasePool {
        while true {
            enum Next {
                case run(DatabasePool)
                case wait
                case open
                case closed
            }
            let next = state.withLock { state -> Next in
                if state.closed { return .closed }
                if state.paused || (writing && state.writesHeld) { return .wait }
                guard let pool = state.pool else { return .open }
                state.running += 1
                if writing { state.runningWrites += 1 }
                return .run(pool)
            }
            switch next {
            case .run(let pool):
                return pool
            case .closed:
                throw DBKeyError(.invalidConfiguration, "The KeyedDatabasePool on \(manager.databasePath) is closed.")
            case .open:
                try await openPool(replacingClosed: false)
            case .wait:
                await withCheckedContinuation { continuation in
                    let now = state.withLock { state -> Bool in
                        guard state.paused || (writing && state.writesHeld), !state.closed else { return true }
                        state.waiting.append(continuation)
                        return false
                    }
                    if now { continuation.resume() }
                }
            }
        }
    }

    private func leave(writing: Bool) {
        state.withLock {
            $0.running -= 1
            if writing { $0.runningWrites -= 1 }
        }
    }

    private func resumeWaiting() {
        let waiting = state.withLock { state in
            defer { state.waiting = [] }
            return state.waiting
        }
        for continuation in waiting {
            continuation.resume()
        }
    }

    fileprivate func remove(_ identifier: Int) {
        _ = state.withLock { $0.observations.removeValue(forKey: identifier) }
    }
}

/// An observation a ``KeyedDatabasePool`` starts again on every new pool.
public final class KeyedObservation: Sendable {
    private let startOn: @Sendable (DatabasePool) -> AnyDatabaseCancellable
    private let state = Mutex<(cancellable: AnyDatabaseCancellable?, owner: (KeyedDatabasePool, Int)?)>((nil, nil))

    fileprivate init(start: @escaping @Sendable (DatabasePool) -> AnyDatabaseCancellable) {
        startOn = start
    }

    fileprivate var owner: (KeyedDatabasePool, Int)? {
        get { state.withLock { $0.owner } }
        set { state.withLock { $0.owner = newValue } }
    }

    fileprivate func start(on pool: DatabasePool) {
        let cancellable = startOn(pool)
        state.withLock { $0.cancellable = cancellable }
    }

    fileprivate func stop() {
        state.withLock { state in
            defer { state.cancellable = nil }
            return state.cancellable
        }?.cancel()
    }

    /// Stops the observation for good.
    public func cancel() {
        stop()
        if let (pool, identifier) = state.withLock({ $0.owner }) {
            pool.remove(identifier)
        }
    }
}
