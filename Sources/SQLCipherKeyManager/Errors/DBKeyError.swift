import SystemPackage

/// The one error type DBKey throws.
///
/// Each error has a ``code`` that says what class of failure it is, and a ``message`` that says
/// what happened and what to do about it. Match on the code with `~=`:
///
/// ```swift
/// do {
///     let db = try await manager.open()
///     try db.execute("PRAGMA user_version")
/// } catch DBKeyError.Code.kmsUnavailable {
///     // retry later: nothing was changed
/// } catch DBKeyError.Code.wrongKey {
///     // the .key file does not belong to this database
/// }
/// ```
///
/// No key, passphrase, token or credential ever appears in an error's message or description.
public struct DBKeyError: Error, Sendable, CustomStringConvertible {
    /// The class of failure.
    ///
    /// Codes are extensible: new ones may be added in later versions, so a `switch` over them
    /// needs a `default` case.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        /// The stable name of the code, as printed by `dbkey` and in `--json` output.
        public let rawValue: String

        /// Creates a code from its name.
        public init(rawValue: String) {
            self.rawValue = rawValue
        }

        public var description: String { rawValue }

        /// The key does not open the database: the `.key` file belongs to another database, or
        /// the KMS returned a key that does not match the file's key check.
        public static let wrongKey = Code(rawValue: "wrong-key")
        /// The key is right but the database file is damaged.
        public static let databaseDamaged = Code(rawValue: "database-damaged")
        /// The database file does not exist.
        public static let databaseNotFound = Code(rawValue: "database-not-found")
        /// A database or `.key` file is already there; initialising would overwrite it.
        public static let alreadyInitialized = Code(rawValue: "already-initialized")
        /// The `.key` file does not exist.
        public static let keyFileMissing = Code(rawValue: "key-file-missing")
        /// The `.key` file is not valid: not JSON, a field missing or of the wrong type, too large.
        public static let keyFileCorrupt = Code(rawValue: "key-file-corrupt")
        /// A key file (the `.key` file or a master key file) is a symbolic link, not a regular
        /// file, owned by someone else, or accessible to group or others.
        public static let keyFileInsecure = Code(rawValue: "key-file-insecure")
        /// The KMS could not be reached or failed; retrying later may succeed.
        public static let kmsUnavailable = Code(rawValue: "kms-unavailable")
        /// The KMS refused the credentials or the caller is not allowed to use the key.
        public static let kmsAccessDenied = Code(rawValue: "kms-access-denied")
        /// The KMS does not have the key-encryption key (or the configured local master key is
        /// not the one the `.key` file was wrapped under).
        public static let kmsKeyNotFound = Code(rawValue: "kms-key-not-found")
        /// The key-encryption key exists but is disabled or pending deletion.
        public static let kmsKeyDisabled = Code(rawValue: "kms-key-disabled")
        /// The wrapped data key failed authentication: it was altered, or the encryption context
        /// differs from the one it was wrapped with.
        public static let ciphertextInvalid = Code(rawValue: "ciphertext-invalid")
        /// Another connection or process is using the database.
        public static let databaseInUse = Code(rawValue: "database-in-use")
        /// The connection pool was closed: it runs no more work.
        public static let databaseClosed = Code(rawValue: "database-closed")
        /// A rotation was interrupted and could not be completed or rolled back automatically.
        public static let rotationInterrupted = Code(rawValue: "rotation-interrupted")
        /// A key change is committed (its journal records it) but not finished: it completes on
        /// its own — the next open of the database finishes it, or the app carrying it out
        /// does. Nothing is lost and nothing needs undoing; `dbkey status` shows the outcome.
        public static let keyChangePending = Code(rawValue: "key-change-pending")
        /// The file was written in a format this version cannot read (a newer SQLCipher, a newer
        /// `.key` format).
        public static let unsupportedFormat = Code(rawValue: "unsupported-format")
        /// SQLite reported an error running a statement (syntax, constraint, …).
        public static let sqlite = Code(rawValue: "sqlite-error")
        /// A file system call failed (disk full, permission denied, …).
        public static let io = Code(rawValue: "io-error")
        /// A setting is invalid: a KEK URI, an encryption context, a master key, an option.
        public static let invalidConfiguration = Code(rawValue: "invalid-configuration")

        /// Whether `error` is a ``DBKeyError`` with this code.
        public static func ~= (code: Code, error: any Error) -> Bool {
            (error as? DBKeyError)?.code == code
        }
    }

    /// The class of failure.
    public let code: Code
    /// What happened and what to do about it. Never contains secrets.
    public let message: String
    /// The SQLite result code, for errors that come from SQLite.
    public let resultCode: SQLiteResultCode?
    /// The system error, for errors that come from a system call.
    public let errno: Errno?
    /// The file the error is about (a database, a `.key` file, a lock file), when there is one.
    public let path: String?
    /// The KEK the error is about, when there is one.
    public let kekId: String?
    /// The error this one was made from (a `URLError`, an `Errno`, a provider's own error), when
    /// there is one. Its description is not part of ``description``.
    public let underlying: (any Error & Sendable)?

    /// Creates an error.
    ///
    /// - Parameters:
    ///   - code: The class of failure.
    ///   - message: What happened and what to do; never a secret.
    ///   - resultCode: SQLite's result code, for SQLite failures.
    ///   - errno: The system error, for system call failures.
    ///   - path: The file concerned.
    ///   - kekId: The KEK concerned.
    ///   - underlying: The error this one wraps.
    public init(
        _ code: Code,
        _ message: String,
        resultCode: SQLiteResultCode? = nil,
        errno: Errno? = nil,
        path: String? = nil,
        kekId: String? = nil,
        underlying: (any Error & Sendable)? = nil
    ) {
        self.code = code
        self.message = message
        self.resultCode = resultCode
        self.errno = errno
        self.path = path
        self.kekId = kekId
        self.underlying = underlying
    }

    /// The same error with the file and KEK it concerns filled in where they were not known.
    func about(path: String? = nil, kekId: String? = nil) -> DBKeyError {
        DBKeyError(
            code, message, resultCode: resultCode, errno: errno, path: self.path ?? path,
            kekId: self.kekId ?? kekId, underlying: underlying)
    }

    /// The same error with `sentence` appended to its message.
    func adding(_ sentence: String) -> DBKeyError {
        DBKeyError(
            code, message + " " + sentence, resultCode: resultCode, errno: errno, path: path, kekId: kekId,
            underlying: underlying)
    }

    /// Whether the same call may succeed if tried again later.
    public var isRetryable: Bool {
        code == .kmsUnavailable || code == .databaseInUse
    }

    public var description: String { "\(code): \(message)" }
}
