extension DatabaseKeyManager {
    /// Opens a connection pool on the database — one writer and up to `maximumReaders` readers
    /// in WAL mode — creating the database and its key on first use, as
    /// ``openOrCreate()`` does.
    ///
    /// ```swift
    /// let pool = try await manager.openPool(maximumReaders: 4, answeringRotationRequests: .seconds(2))
    /// let notes = try await pool.read { db in try db.fetchAll("SELECT count(*) FROM sqlite_master") }
    /// ```
    ///
    /// - Parameters:
    ///   - maximumReaders: The most readers open at once (at least 1).
    ///   - answeringRotationRequests: How often the pool checks for an operator's rotation
    ///     request (``RotationRequest``, `dbkey rotate --request`); `nil`, the default, never.
    ///   - synchronous: When the writer's commits reach the disk (``ConnectionPool/Synchronous``):
    ///     ``ConnectionPool/Synchronous/full``, the default, at each commit.
    /// - Returns: The open pool; close it with ``ConnectionPool/close()``.
    /// - Throws: What ``openOrCreate()`` throws; ``DBKeyError/Code-swift.struct/sqlite`` when the
    ///   database cannot be switched to WAL mode.
    public func openPool(
        maximumReaders: Int = 4,
        answeringRotationRequests: Duration? = nil,
        synchronous: ConnectionPool.Synchronous = .full
    ) async throws -> ConnectionPool {
        guard maximumReaders >= 1 else {
            throw DBKeyError(
                .invalidConfiguration, "A pool needs at least one reader; \(maximumReaders) were asked for.")
        }
        try await createOnFirstUse()
        let pool = ConnectionPool(
            database: database, maximumReaders: maximumReaders, rotationRequestInterval: answeringRotationRequests,
            synchronous: synchronous)
        do {
            try await pool.start()
        } catch let error as DBKeyError {
            database.record(.openFailed, try? database.keyStore.read(), detail: error.code.rawValue)
            throw error
        }
        return pool
    }

    /// Makes `coordinator` take part in the key changes this process makes to the database:
    /// it is asked to close its handles before and to reopen them after (see
    /// ``KeyChangeCoordinator``).
    ///
    /// - Returns: The registration; the coordinator takes part until it is cancelled or
    ///   released.
    public func register(_ coordinator: any KeyChangeCoordinator) -> KeyChangeRegistration {
        KeyChangeParticipants.shared.register(
            CoordinatorParticipant(coordinator: coordinator), databasePath: databasePath)
    }

    /// Carries out an operator's rotation request (`dbkey rotate --request`), if one is waiting,
    /// and writes its outcome for the requester: what a ``ConnectionPool`` opened with
    /// `answeringRotationRequests` does by itself, for an app whose own SQLite stack holds the
    /// database through the keying seam and a registered ``KeyChangeCoordinator`` (GRDB through
    /// DBKeyGRDB's `KeyedDatabasePool`). Call it on a timer; it returns at once when no request
    /// waits.
    ///
    /// ```swift
    /// let answering = Task {
    ///     while !Task.isCancelled {
    ///         try? await Task.sleep(for: .seconds(2))
    ///         await manager.answerRotationRequest()
    ///     }
    /// }
    /// ```
    public func answerRotationRequest() async {
        await RotationRequest.answer(database: database)
    }

    /// Asks the app holding the database to rotate its key, and waits for the outcome — the
    /// way to rotate a database a running app's ``ConnectionPool`` keeps open (see
    /// ``RotationRequest``).
    ///
    /// - Parameters:
    ///   - timeout: The longest this waits, for an app to claim the request and for its answer.
    ///   - dropUnreachableSlots: As for ``rotateKey(wait:dropUnreachableSlots:inPlace:progress:)``.
    /// - Returns: The rotated `.key` file.
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when no app claimed the request
    ///   in time (it is withdrawn; nothing changed) or another request is waiting; the app's
    ///   rotation error, with its code; ``DBKeyError/Code-swift.struct/rotationInterrupted``
    ///   when the app stopped without answering (its claim no longer held: told at once, not at
    ///   the timeout); ``DBKeyError/Code-swift.struct/keyChangePending`` when the app is still
    ///   rotating at the timeout (it finishes on its own).
    @discardableResult
    public func requestRotation(timeout: Duration = .seconds(60), dropUnreachableSlots: Bool = false) async throws
        -> KeyFile
    {
        try database.opener.refuseSymbolicLink()
        return try await RotationRequest.request(
            database: database, timeout: timeout, dropUnreachableSlots: dropUnreachableSlots)
    }
}
