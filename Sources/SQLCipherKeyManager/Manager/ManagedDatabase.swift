import Foundation
import Logging
import Synchronization
import SystemPackage

/// One managed database as the workflows see it: who owns what beside it, and the locks,
/// settling and events every workflow shares. ``DatabaseKeyManager`` is its public face;
/// rotation, rewrap, migration, status and the journal are small types over it.
///
/// Each concern has one owner, and they depend one way: ``DatabaseFiles`` names and handles
/// every file beside the database; ``KeyFileStore`` reads and writes the `.key` in them;
/// ``KeyUnlocker`` turns a `.key` into its data key through the providers, slots and cache;
/// ``DatabaseOpener`` opens the file with that key and explains a failure.
final class ManagedDatabase: Sendable {
    let databasePath: String
    /// Every file beside the database, by name.
    let files: DatabaseFiles
    /// The `.key` file.
    let keyStore: KeyFileStore
    /// The `.key`'s data key, through the providers, slots and cache.
    let unlocker: KeyUnlocker
    /// Opens the database file.
    let opener: DatabaseOpener
    let configuration: DatabaseKeyManager.Configuration
    let logger: Logger
    let audit: any AuditSink
    /// Called at each step of a key change; tests make it throw to simulate a crash there.
    let faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?
    /// Whether the fault injector has thrown: the simulated crash stops the change where it is,
    /// with nothing settled after it, as a killed process would leave it.
    private let crashSimulated = Mutex(false)

    /// Whether a test's fault injector has simulated a crash in a key change of this database.
    var isCrashSimulated: Bool { crashSimulated.withLock { $0 } }
    /// The `.key` file's path.
    var keyFilePath: String { files.keyFile }
    var providers: KmsRegistry { keyStore.providers }

    convenience init(
        databasePath: String,
        providers: KmsRegistry,
        configuration: DatabaseKeyManager.Configuration,
        logger: Logger,
        faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?,
        slotAccess: KeySlotAccess = .automatic
    ) {
        var logger = logger
        logger[metadataKey: "database"] = "\(databasePath)"
        let files = DatabaseFiles(databasePath)
        let keyStore = KeyFileStore(files: files, providers: providers)
        let audit = configuration.auditSink ?? LoggingAuditSink(logger: logger)
        self.init(
            files: files, keyStore: keyStore,
            unlocker: KeyUnlocker(
                keyStore: keyStore, access: slotAccess, slotFallback: configuration.slotFallback,
                cacheTimeToLive: configuration.keyCacheTTL, audit: audit, logger: logger),
            configuration: configuration, audit: audit, logger: logger, faultInjector: faultInjector)
    }

    private init(
        files: DatabaseFiles, keyStore: KeyFileStore, unlocker: KeyUnlocker,
        configuration: DatabaseKeyManager.Configuration, audit: any AuditSink, logger: Logger,
        faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?
    ) {
        self.databasePath = files.database
        self.files = files
        self.keyStore = keyStore
        self.unlocker = unlocker
        self.opener = DatabaseOpener(files: files, busyTimeout: configuration.busyTimeout, logger: logger)
        self.configuration = configuration
        self.audit = audit
        self.logger = logger
        self.faultInjector = faultInjector
    }

    /// The same database, unwrapping its key only through the slots `access` allows (for
    /// recovery), with a key cache of its own.
    func restricted(to access: KeySlotAccess) -> ManagedDatabase {
        ManagedDatabase(
            files: files, keyStore: keyStore, unlocker: unlocker.restricted(to: access), configuration: configuration,
            audit: audit, logger: logger, faultInjector: faultInjector)
    }

    var journal: KeyChangeJournal { KeyChangeJournal(database: self) }

    // MARK: - New keys and databases

    /// The `.key` record of a new data key under the configuration, for a database with
    /// `cipher` settings.
    func newKeyFile(for dataKey: DataKey, provider: String, cipher: CipherSettings) -> KeyFile {
        KeyFile(
            kms: provider,
            kekId: dataKey.kekId,
            encryptedDek: dataKey.wrapped,
            createdAt: KeyFile.now(),
            encryptionContext: configuration.encryptionContext,
            keyCheck: KeyCheck(for: dataKey.plaintext),
            rotationPeriodDays: configuration.rotationPeriodDays,
            cipher: cipher
        )
    }

    /// Checks, before a new database or copy is written, that the `.key` of `dataKey` stays
    /// readable with a key change pending (the salt and the SQLCipher version it will record
    /// are not known yet: the longest they can be stands in for them).
    func requireRoom(for dataKey: DataKey, provider: String) throws {
        var cipher = CipherSettings.new(format: 4, pageSize: configuration.pageSize)
        cipher.sqlcipherVersion = String(repeating: "9", count: 64)
        cipher.salt = Array(repeating: 0, count: CipherSettings.saltByteCount)
        try newKeyFile(for: dataKey, provider: provider, cipher: cipher).requireRoomForKeyChanges(source: keyFilePath)
    }

    /// Refuses to create a database with a SQLCipher 3.x library unless the configuration
    /// allows the 3 format; checked before anything is created.
    ///
    /// - Returns: The linked engine.
    @discardableResult
    func requireNewDatabasesAllowed() throws -> SQLCipherEngine {
        let engine = try SQLCipherEngine.linked()
        guard engine.newDatabaseFormat >= 4 || configuration.allowsSQLCipher3Databases else {
            throw DBKeyError(
                .unsupportedFormat,
                "This process linked SQLCipher \(engine.version), which makes databases in the old 3 format; DBKey creates new databases in the SQLCipher 4 format unless told otherwise. Link SQLCipher 4 (see \"SQLCipher Versions\" in DBKey's documentation: Debian 13's libsqlcipher-dev, or a 4.x build found through PKG_CONFIG_PATH), or allow the 3 format: DatabaseKeyManager.Configuration.allowsSQLCipher3Databases, dbkey --allow-sqlcipher3, or \(DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable)=1. Nothing was created.",
                path: databasePath)
        }
        return engine
    }

    /// The settings of a database this manager creates: the linked SQLCipher's newest format,
    /// the configured page size and, when configured, a plaintext header with its salt.
    func newDatabaseCipher() throws -> CipherSettings {
        let engine = try requireNewDatabasesAllowed()
        var cipher = CipherSettings.new(format: engine.newDatabaseFormat, pageSize: configuration.pageSize)
        cipher.sqlcipherVersion = engine.version
        if configuration.plaintextHeader {
            guard engine.newDatabaseFormat >= 4 else {
                throw DBKeyError(
                    .unsupportedFormat,
                    "A plaintext header needs SQLCipher 4; the linked SQLCipher is \(engine.version) (see \"SQLCipher Versions\" in DBKey's documentation)."
                )
            }
            cipher = cipher.withPlaintextHeader()
        }
        return cipher
    }

    // MARK: - Locks and opens

    /// Takes the shared lock with no key change pending, finishing or undoing an interrupted
    /// one first (under the exclusive lock).
    ///
    /// - Returns: The held lock and the `.key` file read under it.
    func acquireSettled(wait: Duration) async throws -> (DatabaseLock, KeyFile) {
        let lock: DatabaseLock
        if let existing = try await DatabaseLock.acquire(
            .shared, databasePath: databasePath, wait: wait, creating: false)
        {
            lock = existing
        } else {
            // No lock file: a database never opened here, or none at all. Reading creates nothing
            // for a database without a .key (reading it throws why).
            _ = try keyStore.read(cached: true)
            do {
                lock = try await DatabaseLock.acquire(.shared, databasePath: databasePath, wait: wait)
            } catch let error as DBKeyError where error.errno == .readOnlyFileSystem {
                // No key change can happen on a read-only file system: a reader needs no lock.
                lock = .readOnlyFileSystem
            }
        }
        let keyFile = try keyStore.read(cached: true)
        guard keyFile.pending != nil else {
            files.removeStaleCopies(logger: logger)
            return (lock, keyFile)
        }
        lock.release()
        do {
            let exclusive = try await DatabaseLock.acquire(.exclusive, databasePath: databasePath, wait: wait)
            defer { exclusive.release() }
            files.removeStaleTemporaryKeyFiles(logger: logger)
            _ = try await journal.settle(try keyStore.read())
        }
        let settledLock = try await DatabaseLock.acquire(.shared, databasePath: databasePath, wait: wait)
        return (settledLock, try keyStore.read())
    }

    /// Runs a key change: reserves it and takes the exclusive lock (waiting up to `wait`),
    /// removes stale temporary `.key` files, settles an interrupted change, and hands `body` the
    /// settled `.key`; afterwards, whatever the outcome, forgets every cached key.
    ///
    /// Connection pools and coordinators of this process on the database are paused first
    /// (closed, their locks let go) and reopened afterwards; `body` hands them the new data key
    /// with ``handOver(_:)``. With `readsGoOn` (a rotation by copy) they only hold their
    /// writes, and their readers go on until `body` calls ``closeReadersForSwap()``. The
    /// reservation is kept until they have reopened, so that no other key change slips in
    /// between.
    func changingKey<Result>(
        wait: Duration, readsGoOn: Bool = false, _ body: (KeyFile) async throws -> Result
    ) async throws -> Result {
        let lock = try await DatabaseLock.reserveKeyChange(databasePath: databasePath, wait: wait)
        defer { lock.release() }
        // A change left journaled is settled with every handle closed: settling may replace the
        // file. An unsealed `.key` (an old format) is proven against the file's first page with a
        // descriptor of DBKey's, whose close would drop the readers' locks.
        let loaded = try? keyStore.read(cached: true)
        let readsGoOn = readsGoOn && loaded?.pending == nil && loaded?.mac != nil
        return try await KeyChangeParticipants.shared.pausing(
            databasePath: databasePath, timeout: configuration.quiesceTimeout, readsGoOn: readsGoOn
        ) { pause in
            try await lock.takeExclusive(databasePath: databasePath, wait: wait)
            defer {
                // No key unwrapped before the change is kept.
                unlocker.cache.removeAll()
                lock.releaseExclusive()
            }
            files.removeStaleTemporaryKeyFiles(logger: logger)
            files.removeUnusableRollbackJournal(logger: logger)
            RotationRequest.removeAbandonedClaim(databasePath)
            return try await TaskPause.$current.withValue(pause) {
                let settled = try await journal.settle(try keyStore.read())
                files.removeStaleCopies(logger: logger)
                return try await body(settled)
            }
        }
    }

    /// Closes the readers of this process's pools and coordinators that a rotation by copy let
    /// go on, before the copy is swapped in.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when a read does not finish by
    ///   the configuration's `quiesceTimeout`.
    func closeReadersForSwap() async throws {
        try await TaskPause.current?.closeReaders()
    }

    /// Gives the pools and coordinators paused for the running key change its new data key, so
    /// that they reopen without asking the KMS.
    func handOver(_ key: SecureBuffer) {
        TaskPause.current?.handOver(key)
    }

    // MARK: - Events and faults

    /// Sends an audit event about `keyFile`'s current key.
    func record(_ kind: AuditEvent.Kind, _ keyFile: KeyFile?, detail: String? = nil) {
        audit.record(
            AuditEvent(
                kind: kind, databasePath: databasePath, provider: keyFile?.kms, kekId: keyFile?.kekId,
                dekVersion: keyFile?.version, detail: detail))
    }

    /// Runs the fault injector for a step, if there is one.
    func reach(_ step: KeyChangeStep) throws {
        do {
            try faultInjector?(step)
        } catch {
            crashSimulated.withLock { $0 = true }
            throw error
        }
    }
}

extension ManagedDatabase {
    /// Opens the database under a shared lock held for the connection's lifetime, finishing or
    /// undoing an interrupted key change first; a failure is an audit event.
    func openReportingKeyFile() async throws -> (connection: DatabaseConnection, keyFile: KeyFile) {
        var settled: KeyFile?
        do {
            try opener.refuseSymbolicLink()
            let (lock, keyFile) = try await acquireSettled(wait: configuration.openWait)
            settled = keyFile
            let key = try await unlocker.unwrapKey(of: keyFile)
            let connection = try opener.openConnection(key: key, keyFile: keyFile, onClose: { lock.release() })
            try connection.guardAgainstKeyChanges()
            logger.debug("Opened the database", metadata: ["version": "\(keyFile.version)"])
            return (connection, keyFile)
        } catch let error as DBKeyError {
            // The record the open read, or (when reading it failed) whatever is there now.
            record(.openFailed, settled ?? (try? keyStore.read(cached: true)), detail: error.code.rawValue)
            throw error
        }
    }
}
