import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Manages one SQLCipher database's key: creates it through a KMS, keeps it wrapped in the
/// database's `.key` file, and opens the database with it.
///
/// ```swift
/// let logger = Logger(label: "app.db")
/// let kms = try LocalKms.fromEnvironment(logger: logger)
/// let manager = LocalDbKeyManager(
///     databasePath: "/var/lib/app/app.db",
///     kms: kms,
///     configuration: .init(encryptionContext: ["purpose": "field-notes"], rotationPeriodDays: 90),
///     logger: logger
/// )
/// try await manager.initialize()          // once: new key, new encrypted database
/// let db = try await manager.open()       // every start: unwrap, open, verify
/// ```
///
/// The manager logs audit events (key generated, key loaded, database opened, open failed) at
/// `info` and `warning` levels with an `event` metadata key. No key material is ever logged.
public final class LocalDbKeyManager: Sendable {
    /// Settings for new keys. Opening an existing database uses what its `.key` file records.
    public struct Configuration: Sendable {
        /// The KEK new data keys are wrapped under, in the provider's terms (`default` for the
        /// local master key, a key ARN or alias for AWS KMS).
        public var kekId: String
        /// The context bound to new wrapped keys.
        public var encryptionContext: EncryptionContext
        /// Days between rotations; `nil` for no rotation policy.
        public var rotationPeriodDays: Int?
        /// The `cipher_page_size` of new databases.
        public var pageSize: Int
        /// How long ``LocalDbKeyManager/open()`` waits for a running rotation or migration to
        /// finish before failing with ``DBKeyError/Code-swift.struct/databaseInUse``.
        public var openWait: Duration
        /// How long an unwrapped data key is kept in memory, so that reopening within this time
        /// makes no KMS call; `.zero` turns the cache off.
        public var keyCacheTTL: Duration

        /// Creates a configuration.
        public init(
            kekId: String = LocalKms.defaultKekName,
            encryptionContext: EncryptionContext = .empty,
            rotationPeriodDays: Int? = nil,
            pageSize: Int = CipherSettings.newDatabasePageSize,
            openWait: Duration = .seconds(5),
            keyCacheTTL: Duration = .seconds(300)
        ) {
            self.kekId = kekId
            self.encryptionContext = encryptionContext
            self.rotationPeriodDays = rotationPeriodDays
            self.pageSize = pageSize
            self.openWait = openWait
            self.keyCacheTTL = keyCacheTTL
        }
    }

    /// The database file's path.
    public let databasePath: String
    /// The `.key` file's path: the database path plus `.key`.
    public let keyFilePath: String
    /// The KMS holding the KEK.
    public let kms: any KeyManagementService
    /// Settings for new keys.
    public let configuration: Configuration
    let logger: Logger
    /// Called at each step of a key change; tests make it throw to simulate a failure there.
    let faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?
    /// Data keys unwrapped recently.
    let keyCache: DataKeyCache

    /// Creates a manager for the database at `databasePath`. Nothing is read until a method
    /// needs it.
    public convenience init(
        databasePath: String,
        kms: any KeyManagementService,
        configuration: Configuration = Configuration(),
        logger: Logger
    ) {
        self.init(
            databasePath: databasePath, kms: kms, configuration: configuration, logger: logger, faultInjector: nil)
    }

    init(
        databasePath: String,
        kms: any KeyManagementService,
        configuration: Configuration,
        logger: Logger,
        faultInjector: (@Sendable (KeyChangeStep) throws -> Void)?
    ) {
        self.databasePath = databasePath
        self.keyFilePath = KeyFile.path(forDatabase: databasePath)
        self.kms = kms
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "database"] = "\(databasePath)"
        self.logger = logger
        self.faultInjector = faultInjector
        self.keyCache = DataKeyCache(timeToLive: configuration.keyCacheTTL)
    }

    // MARK: - Creating

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
        if fileExists(keyFilePath) {
            throw DBKeyError(
                .alreadyInitialized,
                "\(keyFilePath) already exists: this database is already managed. Remove the .key file only if you mean to lose the database."
            )
        }
        guard CipherSettings.isValidPageSize(configuration.pageSize) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The page size \(configuration.pageSize) is not a power of two from 512 to 65536.")
        }
        if let days = configuration.rotationPeriodDays, !(1...36_500).contains(days) {
            throw DBKeyError(.invalidConfiguration, "The rotation period must be 1 to 36500 days; got \(days).")
        }
        try createEmptyDatabaseFile()
        let keyFile: KeyFile
        do {
            let dataKey = try await kms.generateDataKey(
                kekId: configuration.kekId, context: configuration.encryptionContext)
            let connection = try DatabaseConnection.open(
                path: databasePath,
                key: dataKey.plaintext,
                pageSize: configuration.pageSize,
                create: true
            )
            // Writing the header creates page 1, and with it the salt.
            try connection.execute("PRAGMA user_version = 0")
            let sqlcipherVersion = try connection.cipherVersion()
            connection.close()
            keyFile = try store(
                newKeyFile(for: dataKey, sqlcipherVersion: sqlcipherVersion, salt: try readSalt()),
                sealedWith: dataKey.plaintext
            )
        } catch {
            removeNewDatabase()
            throw error
        }
        logger.info(
            "Generated a data key and created the encrypted database",
            metadata: ["event": "key.generated", "kms": "\(keyFile.kms)", "kek_id": "\(keyFile.kekId)", "version": "1"]
        )
        return keyFile
    }

    /// The `.key` record of a new data key under this manager's configuration.
    func newKeyFile(for dataKey: DataKey, sqlcipherVersion: String, salt: [UInt8]) -> KeyFile {
        KeyFile(
            kms: kms.providerName,
            kekId: dataKey.kekId,
            encryptedDek: dataKey.wrapped,
            createdAt: KeyFile.now(),
            encryptionContext: configuration.encryptionContext,
            keyCheck: KeyCheck(for: dataKey.plaintext),
            rotationPeriodDays: configuration.rotationPeriodDays,
            cipher: CipherSettings(pageSize: configuration.pageSize, sqlcipherVersion: sqlcipherVersion, salt: salt)
        )
    }

    // MARK: - Reading

    /// Reads and validates the `.key` file. The KMS is not called.
    ///
    /// - Throws: ``DBKeyError`` with a key-file code.
    public func load() throws -> KeyFile {
        try KeyFile.read(from: keyFilePath)
    }

    /// Returns the database's data key, creating the key and the database first if neither
    /// exists.
    ///
    /// - Throws: ``DBKeyError``: key-file codes, KMS codes, or
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` when the KMS returns a key that fails the
    ///   key check.
    public func getOrCreateKey() async throws -> SecureBuffer {
        if !fileExists(keyFilePath) && !fileExists(databasePath) {
            try await initialize()
        }
        let keyFile = try load()
        return try await unwrapKey(of: keyFile)
    }

    /// Opens the database: reads the `.key` file, unwraps the key through the KMS, applies it
    /// and the recorded cipher settings, and proves it with a first read.
    ///
    /// - Returns: A ready connection.
    /// - Throws: ``DBKeyError``. A key that does not open the database is
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` when the `.key` file belongs to another
    ///   database and ``DBKeyError/Code-swift.struct/databaseDamaged`` when the key is right and
    ///   the file is damaged.
    public func open() async throws -> sending DatabaseConnection {
        try await openReportingKeyFile().connection
    }

    /// Opens the database under a shared lock held for the connection's lifetime, finishing or
    /// undoing an interrupted key change first, and logs the outcome.
    func openReportingKeyFile() async throws -> (connection: DatabaseConnection, keyFile: KeyFile) {
        do {
            let (lock, keyFile) = try await acquireSettled(wait: configuration.openWait)
            let key = try await unwrapKey(of: keyFile)
            let connection = try openConnection(key: key, keyFile: keyFile, onClose: { lock.release() })
            logger.info(
                "Opened the database",
                metadata: ["event": "database.opened", "kek_id": "\(keyFile.kekId)", "version": "\(keyFile.version)"]
            )
            return (connection, keyFile)
        } catch let error as DBKeyError {
            logger.warning("Could not open the database", metadata: ["event": "open.failed", "code": "\(error.code)"])
            throw error
        }
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

    // MARK: - Internals

    /// Unwraps the `.key` file's data key and checks it against the file's key check.
    func unwrapKey(of keyFile: KeyFile) async throws -> SecureBuffer {
        guard keyFile.kms == kms.providerName else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(keyFilePath) was made with the \(keyFile.kms) KMS, but this manager was given the \(kms.providerName) KMS."
            )
        }
        if let cached = keyCache.key(for: keyFile) {
            try keyFile.verifySeal(with: cached, source: keyFilePath)
            return cached
        }
        let key = try await kms.decrypt(keyFile.encryptedDek, kekId: keyFile.kekId, context: keyFile.encryptionContext)
        guard key.count == RawKeyText.keyByteCount else {
            throw DBKeyError(.wrongKey, "The KMS returned a \(key.count)-byte key; SQLCipher keys here are 32 bytes.")
        }
        if let check = keyFile.keyCheck, !check.matches(key) {
            throw DBKeyError(
                .wrongKey,
                "The key the KMS returned does not match the key check in \(keyFilePath): its encrypted_dek was replaced by another database's."
            )
        }
        try keyFile.verifySeal(with: key, source: keyFilePath)
        logger.info(
            "Loaded the data key",
            metadata: ["event": "key.loaded", "kek_id": "\(keyFile.kekId)", "version": "\(keyFile.version)"]
        )
        keyCache.store(key, for: keyFile)
        return key
    }

    /// Seals `keyFile` with `key` (the data key it records as current), writes it atomically,
    /// and returns what was written.
    @discardableResult
    func store(_ keyFile: KeyFile, sealedWith key: SecureBuffer) throws -> KeyFile {
        let sealed = keyFile.sealed(with: key)
        try sealed.write(to: keyFilePath)
        return sealed
    }

    /// Opens a connection with `key` and the recorded cipher settings, telling a wrong key from
    /// a damaged database when the first read fails.
    func openConnection(key: SecureBuffer, keyFile: KeyFile, onClose: (() -> Void)? = nil) throws -> DatabaseConnection
    {
        do {
            return try DatabaseConnection.open(
                path: databasePath,
                key: key,
                pageSize: keyFile.cipher.pageSize,
                create: false,
                onClose: onClose
            )
        } catch DBKeyError.Code.wrongKey {
            throw try diagnoseFailedOpen(keyFile: keyFile)
        } catch let error as DBKeyError where error.resultCode == .SQLITE_CANTOPEN && !fileExists(databasePath) {
            // Asked only when SQLite could not open it, so a normal open makes no extra stat.
            throw DBKeyError(
                .databaseNotFound,
                "\(databasePath) does not exist, but its key file does. Restore the database from a backup."
            )
        }
    }

    /// Explains why a key that passed its key check does not open the database, by comparing the
    /// database's salt with the one recorded in the `.key` file.
    private func diagnoseFailedOpen(keyFile: KeyFile) throws -> DBKeyError {
        let header = try readSalt()
        if header == Array("SQLite format 3\0".utf8) {
            return DBKeyError(
                .unsupportedFormat,
                "\(databasePath) is a plaintext SQLite database, not an encrypted one. Bring it under management with dbkey migrate --from-plaintext."
            )
        }
        guard let salt = keyFile.cipher.salt else {
            return DBKeyError(
                .wrongKey,
                "The key in \(keyFilePath) does not open \(databasePath), or the database's first page is damaged; this older .key file records no salt to tell which.",
                resultCode: .SQLITE_NOTADB
            )
        }
        guard salt == header else {
            return DBKeyError(
                .wrongKey,
                "Wrong key for this database: \(keyFilePath) belongs to another database (the salt it records differs from the database's). Find this database's own .key file.",
                resultCode: .SQLITE_NOTADB
            )
        }
        return DBKeyError(
            .databaseDamaged,
            "\(databasePath) is damaged: its key and salt match \(keyFilePath), but its first page does not decrypt. Restore it from a backup.",
            resultCode: .SQLITE_NOTADB
        )
    }

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
                "\(path) already exists. To bring an existing database under management, migrate it (dbkey migrate)."
            )
        } catch {
            throw DBKeyError.io(error, "create", path)
        }
    }

    private func removeNewDatabase() {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            _ = unlink(databasePath + suffix)
        }
    }
}
