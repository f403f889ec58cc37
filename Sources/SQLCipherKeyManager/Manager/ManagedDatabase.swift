import Foundation
import Logging
import Synchronization
import SystemPackage

/// One managed database as the workflows see it: its paths, the providers, the `.key` store,
/// the key cache, and the checks every open makes. ``LocalDbKeyManager`` is its public face;
/// rotation, rewrap, migration, status and the journal are small types over it.
final class ManagedDatabase: Sendable {
    let databasePath: String
    /// Every file beside the database, by name.
    let files: DatabaseFiles
    /// The `.key` file (``files``' `keyFile`).
    var keyFilePath: String { files.keyFile }
    let providers: KmsRegistry
    let configuration: LocalDbKeyManager.Configuration
    let logger: Logger
    let audit: any AuditSink
    /// Called at each step of a key change; tests make it throw to simulate a crash there.
    let faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?
    /// Whether the fault injector has thrown: the simulated crash stops the change where it is,
    /// with nothing settled after it, as a killed process would leave it.
    private let crashSimulated = Mutex(false)

    /// Whether a test's fault injector has simulated a crash in a key change of this database.
    var isCrashSimulated: Bool { crashSimulated.withLock { $0 } }
    /// Data keys unwrapped recently.
    let keyCache: DataKeyCache
    /// Which key slots may unwrap the data key.
    let slotAccess: KeySlotAccess

    init(
        databasePath: String,
        providers: KmsRegistry,
        configuration: LocalDbKeyManager.Configuration,
        logger: Logger,
        faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?,
        slotAccess: KeySlotAccess = .automatic
    ) {
        self.databasePath = databasePath
        self.files = DatabaseFiles(databasePath)
        self.providers = providers
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "database"] = "\(databasePath)"
        self.logger = logger
        self.audit = configuration.auditSink ?? LoggingAuditSink(logger: logger)
        self.faultInjector = faultInjector
        self.keyCache = DataKeyCache(timeToLive: configuration.keyCacheTTL)
        self.slotAccess = slotAccess
    }

    /// The same database, unwrapping its key only through the slots `access` allows (for
    /// recovery), with a key cache of its own.
    func through(_ access: KeySlotAccess) -> ManagedDatabase {
        ManagedDatabase(
            databasePath: databasePath, providers: providers, configuration: configuration, logger: logger,
            faultInjector: faultInjector, slotAccess: access)
    }

    var journal: KeyChangeJournal { KeyChangeJournal(database: self) }

    // MARK: - The .key store

    /// Reads and validates the `.key` file, naming its provider when the older form leaves it
    /// to be inferred.
    ///
    /// - Parameter cached: Whether a record parsed earlier from this very file may be returned
    ///   (an open under the shared lock); a key change always reads the file again.
    func load(cached: Bool = false) throws -> KeyFile {
        var keyFile = try KeyFile.read(from: keyFilePath, cache: cached ? KeyFileCache.shared : nil)
        if keyFile.kms == nil {
            keyFile.kms = try providers.providerName(of: keyFile, source: keyFilePath)
        }
        return keyFile
    }

    /// The registered provider of a `.key` file (or of its pending record).
    func provider(named name: String?) throws -> any KeyManagementService {
        do {
            return try providers.provider(named: name ?? "")
        } catch let error as DBKeyError where error.code == .unsupportedFormat {
            throw DBKeyError(
                .unsupportedFormat,
                "\(keyFilePath) names the KMS provider \"\(name ?? "")\", which is not registered with this manager (registered: \(providers.providerNames.joined(separator: ", "))). The file was left untouched.",
                path: keyFilePath
            )
        }
    }

    /// Seals `keyFile` with `key` (the data key it records as current), writes it atomically
    /// and durably off the cooperative pool, and returns what was written — after checking
    /// that the file stays readable in its largest state, a key change pending.
    @discardableResult
    func store(_ keyFile: KeyFile, sealedWith key: SecureBuffer) async throws -> KeyFile {
        // A change of an unsealed .key (the older forms, or one downgraded to them) seals its
        // cipher settings only once the database's first page has proven them.
        if keyFile.mac == nil, fileExists(keyFilePath) {
            try await proveUnsealedSettings(of: keyFile, key: key)
        }
        var keyFile = keyFile
        // Written in the lowest format that holds it: 4 with slots (its MAC covers them), else 3.
        keyFile.format = keyFile.requiredFormat
        try keyFile.requireRoomForKeyChanges(source: keyFilePath)
        let sealed = keyFile.sealed(with: key)
        let path = keyFilePath
        try await BlockingExecutor.shared.run(.short) { try sealed.write(to: path) }
        return sealed
    }

    /// Checks that the cipher settings an unsealed `.key` implies authenticate the database's
    /// first page under `key`: nothing but the database vouches for them.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileCorrupt`` when they do not.
    private func proveUnsealedSettings(of keyFile: KeyFile, key: SecureBuffer) async throws {
        let cipher = keyFile.cipher
        let path = databasePath
        let proven = try await BlockingExecutor.shared.run(.short) { [self] () -> Bool in
            guard let salt = try cipher.salt ?? (cipher.plaintextHeaderSize > 0 ? nil : readSalt()) else {
                return false
            }
            let page = try PageAuthentication.authenticatingPages(
                path: path, key: key, salt: salt, cipher: cipher, firstPage: 1, limit: 1)
            return page.read == 1 && page.authenticated == 1
        }
        guard proven else {
            throw DBKeyError(
                .keyFileCorrupt,
                "\(keyFilePath) is unsealed (the older form, or one downgraded to it), and the settings it implies (the SQLCipher \(cipher.format) format, \(cipher.pageSize)-byte pages) do not authenticate the first page of \(path): it was altered. Nothing was written; restore the .key from a backup.",
                path: keyFilePath)
        }
    }

    /// Unwraps the `.key` file's data key (through the slots ``slotAccess`` allows) and checks
    /// it against the file's key check and seal.
    func unwrapKey(of keyFile: KeyFile) async throws -> SecureBuffer {
        if case .automatic = slotAccess {
            _ = try provider(named: keyFile.kms)
        }
        if let cached = keyCache.key(for: keyFile) {
            try verifySeal(of: keyFile, with: cached)
            return cached
        }
        let key = try await unwrap(keyFile.currentKey, of: keyFile)
        try verifySeal(of: keyFile, with: key)
        record(.keyLoaded, keyFile)
        keyCache.store(key, for: keyFile)
        return key
    }

    /// Checks `keyFile`'s MAC with `key`, the data key it records as current — once for each
    /// record: a MAC proven for a record proves every record equal to it, field for field,
    /// while a `.key` changed in any field is checked again.
    func verifySeal(of keyFile: KeyFile, with key: SecureBuffer) throws {
        guard !KeyFileCache.shared.isSealProven(keyFile, at: keyFilePath) else { return }
        try keyFile.verifySeal(with: key, source: keyFilePath)
        KeyFileCache.shared.rememberSealProven(keyFile, at: keyFilePath)
    }

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
                "This process linked SQLCipher \(engine.version), which makes databases in the old 3 format; DBKey creates new databases in the SQLCipher 4 format unless told otherwise. Link SQLCipher 4 (see \"SQLCipher Versions\" in DBKey's documentation: Debian 13's libsqlcipher-dev, or a 4.x build found through PKG_CONFIG_PATH), or allow the 3 format: LocalDbKeyManager.Configuration.allowsSQLCipher3Databases, dbkey --allow-sqlcipher3, or \(LocalDbKeyManager.Configuration.allowSQLCipher3DatabasesVariable)=1. Nothing was created.",
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

    /// The provider new keys are wrapped by: the configured one, or the only one registered.
    func newKeyProvider() throws -> any KeyManagementService {
        if let name = configuration.kekProvider {
            guard providers.providerNames.contains(name) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Configuration.kekProvider is \"\(name)\", which is not registered (registered: \(providers.providerNames.joined(separator: ", ")))."
                )
            }
            return try providers.provider(named: name)
        }
        let names = providers.providerNames
        guard names.count == 1 else {
            throw DBKeyError(
                .invalidConfiguration,
                "Several KMS providers are registered (\(names.joined(separator: ", "))): say which one wraps new keys with Configuration.kekProvider."
            )
        }
        return try providers.provider(named: names[0])
    }

    // MARK: - Locks and opens

    /// Refuses a database path whose last component is a symbolic link, at every entry point.
    ///
    /// One rule for every command: DBKey acts on the file at the path, never through a link. A
    /// link would split what belongs together — a migration would encrypt a new file at the
    /// link and leave the plaintext target behind, the `.key` and its lock would sit beside the
    /// link while the pages live elsewhere. (Links in the directories above are followed as
    /// usual.)
    func refuseSymbolicLink() throws {
        guard let status = try? FilePath(databasePath).stat(followTargetSymlink: false),
            status.type == .symbolicLink
        else { return }
        throw DBKeyError(
            .invalidConfiguration,
            "\(databasePath) is a symbolic link; DBKey acts only on the database file itself, never through a link. Use the path it points to (realpath \(databasePath)).",
            path: databasePath
        )
    }

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
            // for a database without a .key (load throws why).
            _ = try load()
            do {
                lock = try await DatabaseLock.acquire(.shared, databasePath: databasePath, wait: wait)
            } catch let error as DBKeyError where error.errno == .readOnlyFileSystem {
                // No key change can happen on a read-only file system: a reader needs no lock.
                lock = .readOnlyFileSystem
            }
        }
        let keyFile = try load(cached: true)
        guard keyFile.pending != nil else {
            removeStaleCopy()
            return (lock, keyFile)
        }
        lock.release()
        do {
            let exclusive = try await DatabaseLock.acquire(.exclusive, databasePath: databasePath, wait: wait)
            defer { exclusive.release() }
            removeStaleTemporaryKeyFiles()
            _ = try await journal.settle(try load())
        }
        let settledLock = try await DatabaseLock.acquire(.shared, databasePath: databasePath, wait: wait)
        return (settledLock, try load())
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
        let loaded = try? load()
        let readsGoOn = readsGoOn && loaded?.pending == nil && loaded?.mac != nil
        return try await KeyChangeParticipants.shared.pausing(
            databasePath: databasePath, timeout: configuration.quiesceTimeout, readsGoOn: readsGoOn
        ) { pause in
            try await lock.takeExclusive(databasePath: databasePath, wait: wait)
            defer {
                // No key unwrapped before the change is kept.
                keyCache.removeAll()
                lock.releaseExclusive()
            }
            removeStaleTemporaryKeyFiles()
            removeUnusableRollbackJournal()
            RotationRequest.removeAbandonedClaim(databasePath)
            return try await TaskPause.$current.withValue(pause) {
                let settled = try await journal.settle(try load())
                removeStaleCopy()
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

    /// A new data key from `kms` under the `.key`'s KEK and context, checked to be 32 bytes.
    func newDataKey(from kms: any KeyManagementService, for keyFile: KeyFile) async throws -> DataKey {
        let newKey = try await kms.generateDataKey(kekId: keyFile.kekId, context: keyFile.encryptionContext)
        guard newKey.plaintext.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .wrongKey, "The KMS generated a \(newKey.plaintext.count)-byte key; SQLCipher keys here are 32 bytes.",
                kekId: keyFile.kekId)
        }
        return newKey
    }

    /// Opens a connection with `key` and the recorded cipher settings, telling a wrong key from
    /// a damaged database when the first read fails.
    func openConnection(key: SecureBuffer, keyFile: KeyFile, onClose: (() -> Void)? = nil) throws -> DatabaseConnection
    {
        do {
            return try DatabaseConnection.open(
                path: databasePath,
                key: key,
                cipher: keyFile.cipher,
                create: false,
                busyTimeout: configuration.busyTimeout,
                onClose: onClose
            )
        } catch DBKeyError.Code.wrongKey {
            throw try diagnoseFailedOpen(key: key, keyFile: keyFile)
        } catch let error as DBKeyError where error.resultCode == .SQLITE_CANTOPEN && !fileExists(databasePath) {
            // Asked only when SQLite could not open it, so a normal open makes no extra stat.
            // A backup or restore killed after writing the .key left its whole copy: finish it.
            if try completeInterruptedPlacement(at: databasePath) {
                logger.debug("Completed an interrupted backup or restore placement")
                return try openConnection(key: key, keyFile: keyFile, onClose: onClose)
            }
            throw DBKeyError(
                .databaseNotFound,
                "\(databasePath) does not exist, but its key file does. Restore the database from a backup.",
                path: databasePath
            )
        }
    }

    /// Opens and closes the database with `key` off the cooperative pool, throwing what
    /// ``openConnection(key:keyFile:onClose:)`` would (wrong key, damaged, empty, missing).
    func proveOpens(with key: SecureBuffer, keyFile: KeyFile) async throws {
        try await BlockingExecutor.shared.run(.short) { [self] in
            try openConnection(key: key, keyFile: keyFile).close()
        }
    }

    /// Whether `key` opens the database file at `path` with `cipher`: `false` when the first
    /// read fails, other errors thrown. Off the cooperative pool: the open may roll back a hot
    /// journal.
    func opens(_ path: String, with key: SecureBuffer, cipher: CipherSettings) async throws -> Bool {
        try await BlockingExecutor.shared.run(.short) {
            do {
                try DatabaseConnection.open(path: path, key: key, cipher: cipher, create: false).close()
                return true
            } catch DBKeyError.Code.wrongKey {
                return false
            }
        }
    }

    /// Explains why a key that passed its key check does not open the database: a plaintext
    /// file; another database (its salt differs from the recorded one); a damaged start of the
    /// file (the salt differs in a byte or two); a database rekeyed after this `.key` was
    /// written (no page authenticates under the key); or a damaged first page (later pages do).
    private func diagnoseFailedOpen(key: SecureBuffer, keyFile: KeyFile) throws -> DBKeyError {
        let cipher = keyFile.cipher
        // With a plaintext header the file starts like a plaintext database and holds no salt:
        // the recorded one stands in for it.
        let header = cipher.plaintextHeaderSize > 0 ? cipher.salt ?? [] : try readSalt()
        if header == Array("SQLite format 3\0".utf8) {
            return DBKeyError(
                .unsupportedFormat,
                "\(databasePath) is a plaintext SQLite database, not an encrypted one. Bring it under management with dbkey migrate --from-plaintext.",
                path: databasePath
            )
        }
        guard let salt = keyFile.cipher.salt else {
            return DBKeyError(
                .wrongKey,
                "The key in \(keyFilePath) does not open \(databasePath), or the database's first page is damaged; this older .key file records no salt to tell which.",
                resultCode: .SQLITE_NOTADB, path: databasePath, kekId: keyFile.kekId
            )
        }
        guard salt == header else {
            let differing = zip(salt, header).filter { $0 != $1 }.count + abs(salt.count - header.count)
            if header.count == salt.count, differing <= 2 {
                return DBKeyError(
                    .databaseDamaged,
                    "\(databasePath) is damaged at its start: the salt in its first 16 bytes differs from the one \(keyFilePath) records in \(differing) byte\(differing == 1 ? "" : "s") (another database's would differ in nearly all). Restore it from a backup.",
                    resultCode: .SQLITE_NOTADB, path: databasePath
                )
            }
            return DBKeyError(
                .wrongKey,
                "Wrong key for this database: \(keyFilePath) belongs to another database (the salt it records differs from the database's). Find this database's own .key file.",
                resultCode: .SQLITE_NOTADB, path: databasePath, kekId: keyFile.kekId
            )
        }
        let pages = try? PageAuthentication.authenticatingPages(
            path: databasePath, key: key, salt: salt, cipher: cipher)
        if let pages, pages.read > 0, pages.authenticated == 0, cipher.plaintextHeaderSize > 0 {
            // The file holds no salt to compare: another database's .key and a rekey look alike.
            return DBKeyError(
                .wrongKey,
                "\(keyFilePath) (data key version \(keyFile.version)) does not fit \(databasePath): no page authenticates under its key and salt. It is another database's .key, or the database was rekeyed after it was written (restore the .key written with it from a backup).",
                resultCode: .SQLITE_NOTADB, path: databasePath, kekId: keyFile.kekId
            )
        }
        if let pages, pages.read > 0, pages.authenticated == 0 {
            return DBKeyError(
                .wrongKey,
                "\(keyFilePath) (data key version \(keyFile.version)) does not fit \(databasePath): no page authenticates under its key, so the database was rekeyed after this .key was written — by a rotation (restore the .key written with it, version \(keyFile.version + 1) or later, from a backup) or by a handle outside DBKey's journal (PRAGMA rekey, GRDB's changePassphrase on a handle keyed through the seam: key changes go through rotateKey).",
                resultCode: .SQLITE_NOTADB, path: databasePath, kekId: keyFile.kekId
            )
        }
        return DBKeyError(
            .databaseDamaged,
            "\(databasePath) is damaged: its key and salt match \(keyFilePath)\(pages.map { $0.authenticated > 0 ? " and its later pages authenticate" : "" } ?? ""), but its first page does not decrypt. Restore it from a backup.",
            resultCode: .SQLITE_NOTADB, path: databasePath
        )
    }

    // MARK: - Files

    /// A database file's first 16 bytes: SQLCipher's salt (or a plaintext SQLite header).
    func readSalt(of path: String? = nil) throws -> [UInt8] {
        let path = path ?? databasePath
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            return try descriptor.closeAfter {
                var salt = [UInt8](repeating: 0, count: CipherSettings.saltByteCount)
                let count = try salt.withUnsafeMutableBytes { try descriptor.read(fromAbsoluteOffset: 0, into: $0) }
                return Array(salt.prefix(count))
            }
        } catch {
            throw DBKeyError.io(error, "read the header of", path)
        }
    }

    /// What an in-place rotation needs beside the database (its journal: about the database's
    /// size, with an eighth to spare) and what it has: free disk space and the process's
    /// file-size limit.
    func roomForRotation() -> (databaseSize: UInt64, needed: UInt64, free: UInt64?, fileSizeLimit: UInt64?) {
        let size = UInt64((try? FilePath(databasePath).stat().size) ?? 0)
        let directory = FilePath(databasePath).removingLastComponent()
        let free =
            (try? FileManager.default.attributesOfFileSystem(forPath: directory.isEmpty ? "." : directory.string))?[
                .systemFreeSize] as? UInt64
        return (size, size + size / 8, free, Platform.fileSizeLimit)
    }

    func fileExists(_ path: String) -> Bool {
        (try? FilePath(path).stat(followTargetSymlink: false)) != nil
    }

    /// Creates the database file empty with mode 0600 (SQLite gives its journals the same mode),
    /// failing if anything is already at the path.
    func createEmptyDatabaseFile(at path: String? = nil) throws {
        let path = path ?? databasePath
        do {
            let descriptor = try FileDescriptor.open(
                FilePath(path),
                .writeOnly,
                options: [.create, .exclusiveCreate, .noFollow, .closeOnExec],
                permissions: [.ownerReadWrite]
            )
            try descriptor.close()
        } catch Errno.fileExists {
            throw DBKeyError(
                .alreadyInitialized,
                "\(path) already exists. To bring an existing database under management, migrate it (dbkey migrate).",
                errno: .fileExists, path: path
            )
        } catch {
            throw DBKeyError.io(error, "create", path)
        }
    }

    /// Whether the database's rollback journal is one SQLite would never roll back: empty, or
    /// its first byte zero (SQLite's test of a hot journal), as a write stopped before its header
    /// was complete leaves it. `nil` when there is none.
    func rollbackJournalIsUnusable() -> Bool? {
        guard
            let descriptor = try? FileDescriptor.open(
                FilePath(files.rollbackJournal), .readOnly, options: [.noFollow, .closeOnExec])
        else { return nil }
        defer { try? descriptor.close() }
        var first: UInt8 = 0
        let count = (try? withUnsafeMutableBytes(of: &first) { try descriptor.read(into: $0) }) ?? 1
        return count == 0 || first == 0
    }

    /// Removes a rollback journal SQLite would never roll back (see ``rollbackJournalIsUnusable()``),
    /// which an open leaves where it is. Under the exclusive lock, and only when no process
    /// outside DBKey holds one of SQLite's locks: then no writer is starting a journal.
    func removeUnusableRollbackJournal() {
        guard rollbackJournalIsUnusable() == true, !DatabaseLock.sqliteLockHeldElsewhere(databasePath: databasePath)
        else { return }
        if unlink(files.rollbackJournal) == 0 {
            logger.debug("Removed a rollback journal SQLite would not roll back")
        }
    }

    /// Removes the `<db>.key.tmp.<number>` files that a process killed in the middle of a
    /// `.key` write left behind. Called under the exclusive lock, when no writer can hold one;
    /// only regular files of exactly that name are removed, never a link or anything else.
    ///
    /// - Returns: How many were removed.
    @discardableResult
    func removeStaleTemporaryKeyFiles() -> Int {
        let keyPath = FilePath(keyFilePath)
        let directory = keyPath.removingLastComponent()
        guard let prefix = keyPath.lastComponent.map({ $0.string + ".tmp." }),
            let names = try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory.string)
        else { return 0 }
        var removed = 0
        for name in names where name.hasPrefix(prefix) {
            let suffix = name.dropFirst(prefix.count)
            guard !suffix.isEmpty, suffix.count <= 20, suffix.allSatisfy({ $0.isASCII && $0.isNumber }) else {
                continue
            }
            let path = directory.appending(name)
            guard let status = try? path.stat(followTargetSymlink: false), status.type == .regular,
                status.userID.rawValue == geteuid()
            else { continue }
            if unlink(path.string) == 0 { removed += 1 }
        }
        if removed > 0 {
            logger.debug("Removed temporary .key files a killed process left", metadata: ["count": "\(removed)"])
        }
        return removed
    }

    /// Removes the copy an upgrade or a rotation killed before its journal was written left
    /// beside the database (a database's worth of disk). Called under a lock with no change
    /// pending: the exclusive lock every copy's maker holds cannot be held by anyone now, and
    /// no record names the copy. One `stat` each when there is none.
    func removeStaleCopy() {
        for copyPath in files.keyChangeCopies.map(\.path) where fileExists(copyPath) {
            removeDatabaseFiles(at: copyPath)
            logger.debug("Removed the copy of an interrupted key change", metadata: ["path": "\(copyPath)"])
        }
    }

    /// Removes a database file and its journals.
    func removeDatabaseFiles(at path: String) {
        for file in [path] + DatabaseFiles(path).sqliteFiles {
            _ = unlink(file)
        }
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
        do {
            try refuseSymbolicLink()
            let (lock, keyFile) = try await acquireSettled(wait: configuration.openWait)
            let key = try await unwrapKey(of: keyFile)
            let connection = try openConnection(key: key, keyFile: keyFile, onClose: { lock.release() })
            try connection.guardAgainstKeyChanges()
            logger.debug("Opened the database", metadata: ["version": "\(keyFile.version)"])
            return (connection, keyFile)
        } catch let error as DBKeyError {
            record(.openFailed, try? load(), detail: error.code.rawValue)
            throw error
        }
    }
}
