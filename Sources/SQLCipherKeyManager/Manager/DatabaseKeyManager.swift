import Foundation
import Logging

/// Manages one SQLCipher database's key: creates it through a KMS, keeps it wrapped in the
/// database's `.key` file, opens the database with it, and changes it without losing data.
///
/// A manager serves every provider in its ``KmsRegistry``: it opens any `.key` file whose
/// provider is registered, and a key moved to another registered provider
/// (``rewrap(to:kekId:slot:wait:)``) still opens through the same manager.
///
/// ```swift
/// let logger = Logger(label: "app.db")
/// let manager = DatabaseKeyManager(
///     databasePath: NSTemporaryDirectory() + "/app.db",
///     kms: try LocalKms.fromEnvironment(logger: logger),
///     configuration: .init(encryptionContext: ["purpose": "field-notes"], rotationPeriodDays: 90),
///     logger: logger
/// )
/// let db = try await manager.openOrCreate()  // every launch; the first creates key and database
/// ```
///
/// Routine work is logged at `debug` and `trace`; key events go to the configuration's
/// ``AuditSink``. No key material is ever logged.
public final class DatabaseKeyManager: Sendable {
    /// Settings for new keys, and how the manager waits and caches. Opening an existing
    /// database uses what its `.key` file records.
    public struct Configuration: Sendable {
        /// The KEK new data keys are wrapped under, in the provider's terms (`default` for the
        /// local master key, a key ARN or alias for AWS KMS).
        public var kekId: String
        /// The id of the provider that wraps new data keys; `nil` when the registry holds one
        /// provider.
        public var kekProvider: String?
        /// The context bound to new wrapped keys.
        public var encryptionContext: EncryptionContext
        /// Days between rotations; `nil` for no rotation policy.
        public var rotationPeriodDays: Int?
        /// The `cipher_page_size` of new databases.
        public var pageSize: Int
        /// Whether new databases (and ``DatabaseKeyManager/upgrade(pageSize:progress:)``'s copy) keep
        /// their first 32 bytes in plaintext (`cipher_plaintext_header_size`), with the salt
        /// recorded in the `.key` and supplied on every open: what iOS needs to recognise a WAL
        /// database held open in a shared app-group container. Needs SQLCipher 4.
        public var plaintextHeader: Bool
        /// How long ``DatabaseKeyManager/open()`` waits for a running rotation or migration to
        /// finish before failing with ``DBKeyError/Code-swift.struct/databaseInUse``.
        public var openWait: Duration
        /// How long an unwrapped data key is kept in memory, so that reopening within this time
        /// makes no KMS call; `.zero` turns the cache off.
        public var keyCacheTTL: Duration
        /// Where key events go; `nil` logs them at `debug` through the manager's logger.
        public var auditSink: (any AuditSink)?
        /// When an open may unwrap the data key through a slot other than the primary KEK:
        /// by default only while the primary's KMS is unavailable (see ``SlotFallback``).
        public var slotFallback: SlotFallback
        /// How long a statement on a connection the manager opens waits for another
        /// connection's lock (another process committing, a WAL checkpoint as the last
        /// connection closes) before failing with ``DBKeyError/Code-swift.struct/databaseInUse``;
        /// `.zero` fails at once.
        public var busyTimeout: Duration
        /// How long a key change made in this process waits for the work running on its
        /// ``ConnectionPool``s and ``KeyChangeCoordinator``s to finish before failing with
        /// ``DBKeyError/Code-swift.struct/databaseInUse``.
        public var quiesceTimeout: Duration
        /// Whether a process that linked SQLCipher 3.x may create databases, in the 3 format.
        /// Off by default: DBKey creates new databases in the SQLCipher 4 format only, and with a
        /// 3.x library ``DatabaseKeyManager/initialize()`` and every call that creates a database
        /// fail with ``DBKeyError/Code-swift.struct/unsupportedFormat``, saying which library
        /// was linked and how to link 4.x. The default is on when the environment sets
        /// `DBKEY_ALLOW_SQLCIPHER3_DATABASES=1` (``allowSQLCipher3DatabasesVariable``).
        public var allowsSQLCipher3Databases: Bool

        /// The environment variable that turns ``allowsSQLCipher3Databases`` on by default.
        public static let allowSQLCipher3DatabasesVariable = "DBKEY_ALLOW_SQLCIPHER3_DATABASES"

        /// Creates a configuration.
        public init(
            kekId: String = LocalKms.defaultKekName,
            kekProvider: String? = nil,
            encryptionContext: EncryptionContext = .empty,
            rotationPeriodDays: Int? = nil,
            pageSize: Int = CipherSettings.newDatabasePageSize,
            plaintextHeader: Bool = false,
            openWait: Duration = .seconds(5),
            keyCacheTTL: Duration = .seconds(300),
            auditSink: (any AuditSink)? = nil,
            slotFallback: SlotFallback = .whenUnavailable,
            busyTimeout: Duration = .seconds(5),
            quiesceTimeout: Duration = .seconds(10),
            allowsSQLCipher3Databases: Bool = ProcessInfo.processInfo.environment[
                Configuration.allowSQLCipher3DatabasesVariable] == "1"
        ) {
            self.kekId = kekId
            self.kekProvider = kekProvider
            self.encryptionContext = encryptionContext
            self.rotationPeriodDays = rotationPeriodDays
            self.pageSize = pageSize
            self.plaintextHeader = plaintextHeader
            self.openWait = openWait
            self.keyCacheTTL = keyCacheTTL
            self.auditSink = auditSink
            self.slotFallback = slotFallback
            self.busyTimeout = busyTimeout
            self.quiesceTimeout = quiesceTimeout
            self.allowsSQLCipher3Databases = allowsSQLCipher3Databases
        }
    }

    let database: ManagedDatabase

    private init(database: ManagedDatabase) {
        self.database = database
    }

    /// The database file's path.
    public var databasePath: String { database.databasePath }
    /// The `.key` file's path: the database path plus `.key`.
    public var keyFilePath: String { database.keyFilePath }
    /// The providers the manager may use.
    public var providers: KmsRegistry { database.providers }
    /// Settings for new keys.
    public var configuration: Configuration { database.configuration }

    /// Creates a manager for the database at `databasePath` that uses the providers in
    /// `providers`. Nothing is read until a method needs it.
    public convenience init(
        databasePath: String,
        providers: KmsRegistry,
        configuration: Configuration = Configuration(),
        logger: Logger
    ) {
        self.init(
            databasePath: databasePath, providers: providers, configuration: configuration, logger: logger,
            faultInjector: nil)
    }

    /// Creates a manager that uses one provider, which also wraps new keys.
    public convenience init(
        databasePath: String,
        kms: any KeyManagementService,
        configuration: Configuration = Configuration(),
        logger: Logger
    ) {
        var configuration = configuration
        configuration.kekProvider = configuration.kekProvider ?? kms.providerName
        self.init(databasePath: databasePath, providers: KmsRegistry(kms), configuration: configuration, logger: logger)
    }

    convenience init(
        databasePath: String,
        providers: KmsRegistry,
        configuration: Configuration,
        logger: Logger,
        faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?
    ) {
        self.init(
            database: ManagedDatabase(
                databasePath: databasePath, providers: providers, configuration: configuration, logger: logger,
                faultInjector: faultInjector))
    }

    // MARK: - Creating and opening

    /// Creates a new data key through the KMS, a new encrypted database, and its `.key` file.
    ///
    /// The database file is created first, empty, with mode 0600 and `O_EXCL` (so an existing
    /// file is never touched); the key and page size are applied and a first page written so
    /// that its salt exists; then the `.key` file is written atomically. If any step fails, the
    /// new database is removed again.
    ///
    /// - Returns: The `.key` file's contents.
    /// - Throws: ``DBKeyError/Code-swift.struct/alreadyInitialized`` when the database or its
    ///   `.key` file exists; KMS codes when the KMS fails (nothing is left behind then);
    ///   ``DBKeyError/Code-swift.struct/io`` when writing fails.
    @discardableResult
    public func initialize() async throws -> KeyFile {
        try await Initialization(database: database).run()
    }

    /// Reads and validates the `.key` file. The KMS is not called.
    ///
    /// - Throws: ``DBKeyError`` with a key-file code; ``DBKeyError/Code-swift.struct/keyFileCorrupt``
    ///   for a file of the older form whose `kek_id` no registered provider claims.
    public func load() throws -> KeyFile {
        try database.keyStore.read()
    }

    /// The database's key, for keying an SQLite handle the app opened itself; the key and the
    /// database are created first when neither exists.
    ///
    /// Like ``open()`` it takes the shared lock and finishes or undoes an interrupted key change
    /// first; the returned key holds the lock until it is released.
    ///
    /// ```swift
    /// let key = try await manager.leaseKey()
    /// defer { key.release() }
    /// print("data key version \(key.version), page size \(key.cipherSettings.pageSize)")
    /// ```
    ///
    /// - Throws: ``DBKeyError``: key-file codes, KMS codes, or
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` when the KMS returns a key that fails the
    ///   key check.
    public func leaseKey() async throws -> KeyLease {
        try database.opener.refuseSymbolicLink()
        try await createOnFirstUse()
        let (lock, keyFile) = try await database.acquireSettled(wait: configuration.openWait)
        do {
            let key = try await database.unlocker.unwrapKey(of: keyFile)
            return KeyLease(key: key, keyFile: keyFile, databasePath: databasePath, lock: lock)
        } catch {
            lock.release()
            throw error
        }
    }

    /// Opens the database, creating it and its key on first use: the one call an app makes on
    /// every launch.
    ///
    /// When neither the database nor its `.key` file exists, it runs ``initialize()``; then it
    /// opens as ``open()`` does, finishing or undoing an interrupted key change. It never
    /// replaces anything: a database without its `.key` is `key-file-missing` (an unmanaged
    /// database is brought under management with ``migrate(from:progress:)``), and a `.key`
    /// without its database is `database-not-found`.
    ///
    /// ```swift
    /// let db = try await manager.openOrCreate()
    /// try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
    /// ```
    ///
    /// - Throws: What ``initialize()`` and ``open()`` throw.
    public func openOrCreate() async throws -> sending DatabaseConnection {
        try await createOnFirstUse()
        return try await open()
    }

    /// Creates the key and the database when neither exists; another process creating them
    /// meanwhile is not an error.
    func createOnFirstUse() async throws {
        guard !DatabaseFiles.exists(keyFilePath) && !DatabaseFiles.exists(databasePath) else { return }
        do {
            try await initialize()
        } catch DBKeyError.Code.alreadyInitialized {
            // Another process created it meanwhile: use theirs.
        }
    }

    /// Opens the database: reads the `.key` file, unwraps the key through its provider, applies
    /// it and the recorded cipher settings, and proves it with a first read.
    ///
    /// - Returns: A ready connection, holding the shared lock until it closes.
    /// - Throws: ``DBKeyError``. A key that does not open the database is
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` when the `.key` file belongs to another
    ///   database and ``DBKeyError/Code-swift.struct/databaseDamaged`` when the key is right and
    ///   the file is damaged; ``DBKeyError/Code-swift.struct/unsupportedFormat`` when the
    ///   `.key` file names a provider that is not registered.
    public func open() async throws -> sending DatabaseConnection {
        try await database.openReportingKeyFile().connection
    }

    /// Whether the key is due for rotation under the `.key` file's `rotation_period_days`.
    ///
    /// - Parameter now: The time to judge by.
    /// - Returns: `false` when no rotation period is set.
    /// - Throws: ``DBKeyError`` with a key-file code.
    public func needsRotation(now: Date = Date()) throws -> Bool {
        guard let due = try load().nextRotationDue else { return false }
        return due <= now
    }

    // MARK: - Key changes

    /// Rotates the data key: a new DEK from the KMS, every page re-encrypted under it (into a
    /// copy that replaces the database, or with `PRAGMA rekey` in place), the `.key` file updated.
    ///
    /// The change is journaled in the `.key` file so that a crash at any moment loses nothing:
    /// 1. the `.key.lock` lock is taken exclusively — no connection or ``KeyLease`` may be
    ///    held;
    /// 2. the KMS creates the new key (a KMS failure changes nothing);
    /// 3. SQLite's exclusive lock is taken on the database (the WAL emptied first) and every
    ///    page is checked against its HMAC, decrypted and encrypted under the new key with a
    ///    fresh IV into `<db>.dbkey-rotating`, on every core, then flushed;
    /// 4. the `.key` file is rewritten with a `pending` record holding the new wrapped key and
    ///    the copy's name, size and checksum;
    /// 5. the copy is renamed over the database and the directory flushed;
    /// 6. a new connection proves the new key;
    /// 7. the `.key` file is rewritten with the new key current and `pending` cleared.
    ///
    /// A later open finishes or undoes a rotation that stopped between 4 and 7 (the recovery table in
    /// <doc:ChangingKeys>); a copy left by a stop before 4 is removed. The journal mode (rollback or
    /// WAL), `user_version`, `application_id` and every page's content are kept. The copy needs
    /// the database's size free on its disk; with `inPlace`, `sqlite3_rekey` re-encrypts the
    /// pages in one write transaction instead (its journal needs about as much, and it is
    /// slower), after the pending record is written.
    ///
    /// Every handle on the database must go through a manager or the keying seam
    /// (``KeyChangeCoordinator``): a handle outside them that stays open across the rename
    /// would go on using the old file.
    ///
    /// ```swift
    /// if try manager.needsRotation() {
    ///     let keyFile = try await manager.rotateKey(wait: .seconds(30))
    ///     print("now at key version \(keyFile.version)")
    /// }
    /// ```
    ///
    /// Every key slot gets the new key in the same journaled change (the pending record carries
    /// it under each slot, escrow seals included), so that a crash leaves every slot able to
    /// open the database.
    ///
    /// - Parameters:
    ///   - wait: How long to wait for open connections to close.
    ///   - dropUnreachableSlots: Leave out the slots whose provider cannot wrap the new key
    ///     (each an audit event) instead of failing before anything changes.
    ///   - inPlace: Re-encrypt with `PRAGMA rekey` in place instead of into a copy.
    ///   - progress: Called about four times a second while pages are re-encrypted.
    /// - Returns: The updated `.key` file.
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when the database stays open
    ///   elsewhere; KMS codes (nothing changed); ``DBKeyError/Code-swift.struct/io`` (the
    ///   database keeps the key that opens it, and the `.key` file says which);
    ///   ``DBKeyError/Code-swift.struct/rotationInterrupted`` when neither key opens the result;
    ///   ``DBKeyError/Code-swift.struct/databaseDamaged`` naming the first page that fails its
    ///   HMAC (nothing changed).
    @discardableResult
    public func rotateKey(
        wait: Duration = .zero,
        dropUnreachableSlots: Bool = false,
        inPlace: Bool = false,
        progress: (@Sendable (KeyChangeProgress) -> Void)? = nil
    ) async throws -> KeyFile {
        try await Rotation(database: database, dropUnreachableSlots: dropUnreachableSlots, inPlace: inPlace)
            .run(wait: wait, progress: progress)
    }

    /// Wraps the same data key under another KEK, possibly of another provider: one atomic
    /// `.key` write; the database is not touched, so it takes the same time at any size.
    ///
    /// Use it to rotate the KEK, to retire a master key, to move a database from the local
    /// provider to a KMS, or to rewrap under the newest version of a Vault Transit key (pass
    /// the same provider and KEK). The new wrap is unwrapped again before it replaces the old
    /// one, so a misconfigured target can never leave an unusable `.key` file. Open connections
    /// are not disturbed; a running rotation is waited for. When `target`'s provider id is
    /// registered with this manager, the manager keeps opening the database.
    ///
    /// ```swift
    /// let newMaster = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
    /// try await manager.rewrap(to: newMaster, kekId: "default")
    /// ```
    ///
    /// - Parameters:
    ///   - target: The provider of the new KEK.
    ///   - kekId: The new KEK, in `target`'s terms.
    ///   - slot: The slot to rewrap: 0 (the default) is the primary KEK.
    ///   - wait: How long to wait for a running rotation.
    /// - Returns: The updated `.key` file.
    /// - Throws: KMS codes from either provider (nothing changed), or
    ///   ``DBKeyError/Code-swift.struct/io`` when the `.key` file cannot be written (the old one
    ///   is intact).
    @discardableResult
    public func rewrap(
        to target: any KeyManagementService,
        kekId: String,
        slot: Int = 0,
        wait: Duration = .seconds(5)
    ) async throws -> KeyFile {
        try await Rewrap(database: database).run(to: target, kekId: kekId, slot: slot, wait: wait)
    }

    // MARK: - Backups

    /// Makes a consistent copy of the database at `destination`, with a `.key` of its own,
    /// while the app keeps running: the copy is one snapshot (an `sqlcipher_export` in a read
    /// transaction, under the shared lock), checked row for row against that snapshot and
    /// flushed before it is placed. Nothing is ever replaced, and a failure leaves nothing at
    /// `destination`.
    ///
    /// ```swift
    /// let backupKek = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
    /// try await manager.backup(to: "/backups/app.db", protection: .kek(backupKek, kekId: "default"), newDataKey: true)
    /// ```
    ///
    /// - Parameters:
    ///   - destination: The backup's database path; its `.key` is written beside it.
    ///   - protection: Which KEKs the backup's data key is wrapped under.
    ///   - newDataKey: Encrypt the copy under a new data key, so that the backup does not
    ///     share the live key (the copy is made under it from the start).
    ///   - progress: Called while the copy is written.
    /// - Returns: The backup's `.key` file.
    @discardableResult
    public func backup(
        to destination: String,
        protection: BackupKeyProtection = .sameAsDatabase,
        newDataKey: Bool = false,
        progress: (@Sendable (KeyChangeProgress) -> Void)? = nil
    ) async throws -> KeyFile {
        try await Backup(database: database).run(
            to: destination, protection: protection, newDataKey: newDataKey, progress: progress)
    }

    /// Puts the backup at `backupPath` (and its `.key`) in place at this manager's database
    /// path, after checking that they open together (key check, salt, every page); never over
    /// an existing database or `.key`. With `target`, the restored `.key`'s primary KEK is
    /// `kekId` of `target` (a new device's), its slots kept.
    ///
    /// - Parameters:
    ///   - backupPath: The backup's database path.
    ///   - access: The slots the backup's key may be unwrapped through; `.escrow` for a
    ///     backup sealed to an escrow key.
    ///   - target: The provider of the restored database's primary KEK; `nil` keeps the
    ///     backup's.
    ///   - kekId: The KEK in `target`'s terms.
    /// - Returns: The restored `.key` file.
    @discardableResult
    public func restore(
        from backupPath: String,
        through access: KeySlotAccess = .automatic,
        rewrapTo target: (any KeyManagementService)? = nil,
        kekId: String? = nil
    ) async throws -> KeyFile {
        try await Restore(database: database).run(from: backupPath, through: access, rewrapTo: target, kekId: kekId)
    }

    // MARK: - Key slots

    /// Adds a key slot: the data key wrapped under `kekId` of `target` as well, so that the
    /// database still opens when the primary KEK's KMS is unavailable (see ``SlotFallback``)
    /// and can be recovered through it (``recover(through:to:kekId:wait:)``).
    ///
    /// One atomic `.key` write under the exclusive lock: it waits up to `wait` for open
    /// connections to close. The new wrap is unwrapped again before it is written.
    ///
    /// ```swift
    /// let secondRegion = MockKms(seed: 7, providerName: "second-region")
    /// try await manager.addSlot(secondRegion, kekId: "key-2")
    /// ```
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` when the file has
    ///   ``KeySlot/maximumAdditionalSlots`` slots already or one under the same KEK; KMS codes.
    @discardableResult
    public func addSlot(_ target: any KeyManagementService, kekId: String, wait: Duration = .zero) async throws
        -> KeyFile
    {
        try await SlotChanges(database: database).add(target, kekId: kekId, wait: wait)
    }

    /// Adds an escrow slot: the data key sealed to an escrow public key (HPKE, see
    /// <doc:KeySlotsAndRecovery>), opened only by its private key, which need never be on this
    /// device. Every rotation re-seals it with the public key alone.
    ///
    /// ```swift
    /// let escrow = try EscrowPrivateKey.generate()  // kept offline; only its public key is here
    /// try await manager.addEscrowSlot(escrow.publicKey)
    /// ```
    @discardableResult
    public func addEscrowSlot(_ publicKey: EscrowPublicKey, wait: Duration = .zero) async throws -> KeyFile {
        try await SlotChanges(database: database).addEscrow(publicKey, wait: wait)
    }

    /// Removes key slot `number` (0, the primary, hands its place to the first other
    /// provider's slot). Refused when no other provider's slot gives the key now.
    ///
    /// Removing a slot revokes nothing while older copies of the `.key` file exist (backups):
    /// they still hold the data key under the removed KEK. With `rotate`, the data key is
    /// rotated in the same journaled change, so that those copies open nothing any more.
    @discardableResult
    public func removeSlot(_ number: Int, rotate: Bool = false, wait: Duration = .zero) async throws -> KeyFile {
        if rotate {
            return try await Rotation(database: database, removingSlot: number).run(wait: wait, progress: nil)
        }
        return try await SlotChanges(database: database).remove(number, wait: wait)
    }

    /// Brings back a database whose primary KEK is lost or refused: unwraps the data key
    /// through `access` alone (a slot, or an escrow private key; an interrupted key change is
    /// settled with it), proves it opens the database, and wraps it under `kekId` of `target`
    /// as the new primary. Never automatic; an audit event.
    ///
    /// ```swift
    /// let escrow = try EscrowPrivateKey(pemFile: "/secure/escrow.pem")
    /// let newMaster = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
    /// try await manager.recover(through: .escrow(escrow), to: newMaster, kekId: "default")
    /// ```
    @discardableResult
    public func recover(
        through access: KeySlotAccess,
        to target: any KeyManagementService,
        kekId: String,
        wait: Duration = .zero
    ) async throws -> KeyFile {
        try await SlotChanges(database: database).recover(through: access, to: target, kekId: kekId, wait: wait)
    }

    /// This manager, unwrapping the data key only through `access`: a break-glass open
    /// through one slot or an escrow key, without changing the `.key` file's primary.
    public func restricted(to access: KeySlotAccess) -> DatabaseKeyManager {
        DatabaseKeyManager(database: database.restricted(to: access))
    }

    /// Brings an existing database under management: a new data key from the KMS, an encrypted
    /// copy made with `sqlcipher_export` (keeping `user_version`, `application_id` and WAL
    /// mode), verified row for row, then swapped in with one `rename`.
    ///
    /// The swap is journaled like a rotation: the copy is complete and `fsync`ed before the
    /// `.key` file with a `pending` record is written, so a crash leaves either the original
    /// database with no `.key` file (run the migration again) or the encrypted one with a
    /// `.key` that opens it (the next open finishes the swap). Stop every process using the
    /// database first: its other connections would not see the swap. It needs free space for
    /// one more copy of the database, and SQLite cannot promise that the old plaintext bytes
    /// are gone from the disk afterwards.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/alreadyInitialized`` for a managed database;
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` for a passphrase or settings that do not open
    ///   it; ``DBKeyError/Code-swift.struct/unsupportedFormat`` for a database the linked
    ///   SQLCipher cannot read (an SQLCipher 4 database on SQLCipher 3.x) or that is not what
    ///   `source` says; KMS codes; in every case the original database is untouched.
    @discardableResult
    public func migrate(
        from source: MigrationSource,
        progress: (@Sendable (KeyChangeProgress) -> Void)? = nil
    ) async throws -> KeyFile {
        try await Migration(database: database).run(from: source, progress: progress)
    }

    /// Moves a managed database in the SQLCipher 3 format to the SQLCipher 4 format
    /// (HMAC-SHA512 page authentication), under a new data key from the same KEK, with SQLCipher
    /// 4's default page size (4096 bytes: what an app opening it with SQLCipher 4's defaults
    /// expects) unless `pageSize` says otherwise; with ``Configuration/plaintextHeader`` the new
    /// file gets a plaintext header.
    /// A database already in the 4 format is left as it is.
    ///
    /// The copy is made with `sqlcipher_export`, checked row for row, `fsync`ed, journaled
    /// (`pending` with the new key and settings) and swapped in with one `rename`, as
    /// ``migrate(from:progress:)`` does: a crash at any moment leaves the 3-format database
    /// with its key, or the 4-format one with the new key, and the next open finishes or
    /// undoes the swap. It needs free space for one more copy of the database. Afterwards only
    /// SQLCipher 4 opens the database.
    ///
    /// ```swift
    /// let upgraded = try await manager.upgrade()
    /// print(upgraded.cipher.format, upgraded.version)  // 4, one more than before
    /// ```
    ///
    /// - Parameters:
    ///   - pageSize: The upgraded database's page size, a power of two from 1024 to 65536.
    ///   - progress: Called about four times a second while the copy is written, then once at
    ///     each later step.
    /// - Returns: The updated `.key` file.
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for another page size;
    ///   ``DBKeyError/Code-swift.struct/unsupportedFormat`` when the linked SQLCipher
    ///   is 3.x; ``DBKeyError/Code-swift.struct/databaseInUse`` when the database is open
    ///   elsewhere; KMS codes; ``DBKeyError/Code-swift.struct/io`` (in every failure before the
    ///   swap, the original database and its `.key` are unchanged).
    @discardableResult
    public func upgrade(
        pageSize: Int = CipherSettings.newDatabasePageSize, progress: (@Sendable (KeyChangeProgress) -> Void)? = nil
    ) async throws -> KeyFile {
        guard CipherSettings.newDatabasePageSizes.contains(pageSize) else {
            throw DBKeyError(
                .invalidConfiguration, "The page size must be a power of two from 1024 to 65536; got \(pageSize).")
        }
        return try await Upgrade(database: database, pageSize: pageSize).run(progress: progress)
    }

    // MARK: - Checks

    /// Reports on the key and the database: the `.key` file's metadata, whether rotation is due,
    /// whether the KMS answers (and how fast), whether the data key is wrapped under the KEK's
    /// newest version, and whether the database opens.
    ///
    /// KMS and database failures are reported in the result, not thrown.
    ///
    /// - Throws: ``DBKeyError`` with a key-file code when the `.key` file cannot be read, or
    ///   ``DBKeyError/Code-swift.struct/unsupportedFormat`` when its provider is not registered.
    public func status(now: Date = Date()) async throws -> DatabaseKeyStatus {
        try await StatusCheck(database: database).run(now: now)
    }

    /// One read-only report of everything that can go wrong with the database and its key,
    /// each problem with its fix: file modes and owners (database, journals, `.key`, lock, the
    /// local master key file), an interrupted key change, each provider slot's reachability,
    /// key and KEK version, rotation due, the `.key`'s salt and key against the database's
    /// first page (another database's `.key`, or another generation's), a journal or WAL left
    /// over, stale temporaries, and free space for a rotation.
    ///
    /// Nothing is written: unlike ``open()`` it does not settle an interrupted change, and
    /// the key is checked against the file's pages without SQLite.
    ///
    /// ```swift
    /// let report = await manager.doctor()
    /// for finding in report.findings { print(finding.check, finding.message, finding.fix) }
    /// ```
    public func doctor(now: Date = Date()) async -> DoctorReport {
        var doctor = Doctor(database: database, now: now)
        return await doctor.run()
    }

    /// Checks everything between the `.key` file and the last page: the file is valid, the KMS
    /// unwraps the key, the key matches the key check, the database opens with it, and
    /// `PRAGMA integrity_check` finds nothing wrong. The check runs on a thread of the package,
    /// never on Swift's cooperative pool.
    ///
    /// - Throws: ``DBKeyError`` for the first check that fails;
    ///   ``DBKeyError/Code-swift.struct/databaseDamaged`` when the integrity check reports
    ///   problems (the first few are in the message).
    public func verify() async throws -> VerificationReport {
        try await Verification(database: database).run()
    }
}
