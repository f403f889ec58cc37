import Foundation
import Synchronization

/// An app's own SQLite stack (GRDB, SQLite.swift, C code keyed through ``KeyLease``) taking
/// part in key changes made while it runs.
///
/// A key change needs the database alone: every handle keyed with the old key must be closed
/// before the pages change. A coordinator registered with ``DatabaseKeyManager/register(_:)``
/// is asked to close its handles when a key change made in this process starts, and to reopen
/// them when it ends — through the seam, which hands out the new key. (A coordinator whose reads
/// can go on while a rotation's copy is made says so with ``readsGoOnDuringRotation``: see
/// <doc:RotatingWhileTheAppRuns>.)
///
/// ```swift
/// final class NotesStore: KeyChangeCoordinator {
///     let manager: DatabaseKeyManager
///     let key = Mutex<KeyLease?>(nil)
///     init(manager: DatabaseKeyManager) { self.manager = manager }
///
///     func closeForKeyChange(before deadline: ContinuousClock.Instant) async throws {
///         // Stop new work, let running work finish, close every handle; then:
///         key.withLock {
///             $0?.release()
///             $0 = nil
///         }
///     }
///
///     func reopenAfterKeyChange() async {
///         let newKey = try? await manager.leaseKey()  // key the app's handles with it
///         key.withLock { $0 = newKey }
///     }
/// }
/// ```
///
/// Never change the key with the stack's own call (GRDB's `changePassphrase`, `PRAGMA rekey`):
/// that rekey is outside DBKey's journal, and the keying seam refuses it.
public protocol KeyChangeCoordinator: AnyObject, Sendable {
    /// Stops new work on the database, waits for running work, closes every handle keyed with
    /// the current key, and releases its ``KeyLease`` (and with it the shared lock).
    ///
    /// - Parameter deadline: When the key change gives up waiting.
    /// - Throws: To refuse: the key change then fails with
    ///   ``DBKeyError/Code-swift.struct/databaseInUse``, changes nothing, and
    ///   ``reopenAfterKeyChange()`` is called.
    func closeForKeyChange(before deadline: ContinuousClock.Instant) async throws

    /// Reopens the handles through the seam (``DatabaseKeyManager/leaseKey()``). Called
    /// once after every key change the coordinator was closed for, whether it succeeded, failed
    /// or was refused.
    func reopenAfterKeyChange() async

    /// Whether the coordinator's read-only handles go on reading while a rotation by copy
    /// re-encrypts the database: `true` to have ``closeWritersForKeyChange(before:)`` called
    /// when the rotation starts, and ``closeForKeyChange(before:)`` only just before the copy
    /// is swapped in. `false` (the default) closes everything when the rotation starts.
    var readsGoOnDuringRotation: Bool { get }

    /// Called when a rotation by copy starts, for a coordinator whose reads go on
    /// (``readsGoOnDuringRotation``): stops new writes, waits for the running one, closes the
    /// handles that write, and lets go of the shared lock with
    /// ``KeyLease/releaseLockForRotation()``, keeping the read-only handles open — they read
    /// the database as it was when the writes stopped, and the key still keys new ones.
    /// ``closeForKeyChange(before:)`` follows before the copy is swapped in, and must close
    /// those handles too and release the key.
    ///
    /// - Parameter deadline: When the key change gives up waiting.
    /// - Throws: To refuse, as ``closeForKeyChange(before:)`` does.
    func closeWritersForKeyChange(before deadline: ContinuousClock.Instant) async throws
}

extension KeyChangeCoordinator {
    /// `false`: every handle closes when a key change starts.
    public var readsGoOnDuringRotation: Bool { false }

    /// Closes every handle (``KeyChangeCoordinator/closeForKeyChange(before:)``).
    public func closeWritersForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        try await closeForKeyChange(before: deadline)
    }
}

/// A coordinator's registration; the coordinator takes part in key changes until it is
/// cancelled or released.
public final class KeyChangeRegistration: Sendable {
    private let cancellation: @Sendable () -> Void

    init(cancellation: @escaping @Sendable () -> Void) {
        self.cancellation = cancellation
    }

    deinit {
        cancellation()
    }

    /// Ends the registration. Later calls do nothing.
    public func cancel() {
        cancellation()
    }
}

/// What holds handles on a database in this process and pauses for a key change: a
/// ``ConnectionPool``, or an app's ``KeyChangeCoordinator``.
protocol KeyChangeParticipant: Sendable {
    /// At the start of a rotation by copy: stops new writes, lets the running one finish (until
    /// `deadline`), closes the handles that write and lets go of the shared lock, keeping the
    /// readers open; a participant that cannot keep its readers closes everything.
    func holdWrites(until deadline: ContinuousClock.Instant) async throws
    /// Lets running work finish (until `deadline`), closes every handle and lets go of the
    /// shared lock; does nothing when already closed. A participant that cannot throws, left
    /// as it was, and is resumed with the others.
    func suspend(until deadline: ContinuousClock.Instant) async throws
    /// Reopens, with `newKey` when the change handed one over (a rotation's new data key).
    func resume(newKey: SecureBuffer?) async
}

/// An app's coordinator as a participant.
final class CoordinatorParticipant: KeyChangeParticipant {
    let coordinator: any KeyChangeCoordinator
    /// Whether ``KeyChangeCoordinator/closeForKeyChange(before:)`` has been called for the
    /// running change.
    private let closed = Mutex(false)

    init(coordinator: any KeyChangeCoordinator) {
        self.coordinator = coordinator
    }

    func holdWrites(until deadline: ContinuousClock.Instant) async throws {
        guard coordinator.readsGoOnDuringRotation else { return try await suspend(until: deadline) }
        try await coordinator.closeWritersForKeyChange(before: deadline)
    }

    func suspend(until deadline: ContinuousClock.Instant) async throws {
        guard !closed.withLock({ $0 }) else { return }
        try await coordinator.closeForKeyChange(before: deadline)
        closed.withLock { $0 = true }
    }

    func resume(newKey: SecureBuffer?) async {
        closed.withLock { $0 = false }
        await coordinator.reopenAfterKeyChange()
    }
}

/// The participants of every database in the process, by path, and the key changes that have
/// them paused.
final class KeyChangeParticipants: Sendable {
    static let shared = KeyChangeParticipants()

    private struct Database {
        var participants: [UInt64: any KeyChangeParticipant] = [:]
        /// The key change that has them paused, if one has.
        var pause: Pause?
    }

    private let databases = Mutex<(next: UInt64, byPath: [String: Database])>((0, [:]))

    /// The key under which a database's participants are filed: its absolute, standardised path.
    private static func name(_ databasePath: String) -> String {
        URL(fileURLWithPath: databasePath).standardizedFileURL.path
    }

    /// Files `participant` under the database; it takes part until the registration ends.
    func register(_ participant: any KeyChangeParticipant, databasePath: String) -> KeyChangeRegistration {
        let name = Self.name(databasePath)
        let id = databases.withLock { state in
            state.next += 1
            state.byPath[name, default: Database()].participants[state.next] = participant
            return state.next
        }
        return KeyChangeRegistration { [self] in
            databases.withLock { state in
                state.byPath[name]?.participants[id] = nil
                if state.byPath[name]?.participants.isEmpty == true && state.byPath[name]?.pause == nil {
                    state.byPath[name] = nil
                }
            }
        }
    }

    /// A key change's hold on a database's participants.
    final class Pause: Sendable {
        let participants: [any KeyChangeParticipant]
        let databasePath: String
        /// How long a participant may take to stop.
        let timeout: Duration
        private let handedOver = Mutex<SecureBuffer?>(nil)

        init(participants: [any KeyChangeParticipant], databasePath: String, timeout: Duration) {
            self.participants = participants
            self.databasePath = databasePath
            self.timeout = timeout
        }

        /// Gives the participants the new data key, so that they reopen without a KMS call.
        func handOver(_ key: SecureBuffer) {
            handedOver.withLock { $0 = key }
        }

        /// Asks every participant at once to hold its writes (`readsGoOn`) or to close.
        ///
        /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when one cannot by the
        ///   timeout; every participant is then as it was or stopped, and is resumed by
        ///   ``resume()``.
        func stop(readsGoOn: Bool) async throws {
            let deadline = ContinuousClock.now + timeout
            let failures = await withTaskGroup(of: (any Error)?.self) { group in
                for participant in participants {
                    group.addTask {
                        do {
                            if readsGoOn {
                                try await participant.holdWrites(until: deadline)
                            } else {
                                try await participant.suspend(until: deadline)
                            }
                            return nil
                        } catch {
                            return error
                        }
                    }
                }
                return await group.compactMap { $0 }.reduce(into: [any Error]()) { $0.append($1) }
            }
            guard let error = failures.first else { return }
            if let error = error as? DBKeyError, error.code == .databaseInUse { throw error }
            throw DBKeyError(
                .databaseInUse,
                "\(databasePath) is in use: a connection pool or coordinator in this process could not close for the key change within \(timeout).",
                path: databasePath, underlying: error)
        }

        /// Closes the readers that a rotation by copy let go on, before the copy is swapped in.
        func closeReaders() async throws {
            try await stop(readsGoOn: false)
        }

        /// Resumes every participant.
        func resume() async {
            let key = handedOver.withLock { $0 }
            await withTaskGroup(of: Void.self) { group in
                for participant in participants {
                    group.addTask { await participant.resume(newKey: key) }
                }
            }
        }
    }

    /// Runs `body` with every participant of the database stopped: closed, their locks let go —
    /// or, with `readsGoOn`, with their writes held and their readers open until `body` calls
    /// ``Pause/closeReaders()``. A change inside another change (a rotation run by a slot
    /// removal) runs in the outer one's pause.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when a participant cannot stop
    ///   by `timeout` (every participant is resumed, nothing is changed); what `body` throws.
    func pausing<Result>(
        databasePath: String, timeout: Duration, readsGoOn: Bool = false, _ body: (Pause?) async throws -> Result
    ) async throws -> Result {
        let name = Self.name(databasePath)
        let (pause, isOuter) = databases.withLock { state -> (Pause?, Bool) in
            guard var database = state.byPath[name] else { return (nil, false) }
            if let running = database.pause { return (running, false) }
            guard !database.participants.isEmpty else { return (nil, false) }
            let pause = Pause(
                participants: Array(database.participants.values), databasePath: databasePath, timeout: timeout)
            database.pause = pause
            state.byPath[name] = database
            return (pause, true)
        }
        guard let pause, isOuter else { return try await body(pause) }
        defer {
            databases.withLock { state in
                state.byPath[name]?.pause = nil
                if state.byPath[name]?.participants.isEmpty == true { state.byPath[name] = nil }
            }
        }
        do {
            try await pause.stop(readsGoOn: readsGoOn)
            let result = try await body(pause)
            await pause.resume()
            return result
        } catch {
            await pause.resume()
            throw error
        }
    }
}

/// The pause of the key change the current task runs, for handing its new key over.
enum TaskPause {
    @TaskLocal static var current: KeyChangeParticipants.Pause?
}
