import Synchronization

/// A managed database's data key, typed so that it can only be used as a key: applied to an
/// SQLite handle, or read as SQLCipher's raw-key text — never as bytes a caller could mistake
/// for a passphrase.
///
/// It also holds the database's shared lock from the moment it is made until ``release()``, so
/// that no rotation re-encrypts pages under handles keyed with it: release it when the last of
/// those handles is closed (it releases itself when it is deinitialised).
///
/// This is the seam for an app's own SQLite stack — GRDB, SQLite.swift, its own C code — which
/// must link the same `libsqlcipher` as DBKey (two SQLite libraries in one process crash it):
///
/// ```swift
/// let key = try await manager.leaseKey()
/// var handle: OpaquePointer?
/// guard sqlite3_open_v2(manager.databasePath, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK, let handle else {
///     throw DBKeyError(.io, "cannot open the database")
/// }
/// try key.apply(to: handle)  // sqlite3_key, cipher settings, proof — before any other statement
/// // … use the handle …
/// sqlite3_close_v2(handle)
/// key.release()
/// ```
public final class KeyLease: Sendable, CustomStringConvertible {
    /// The database's path.
    public let databasePath: String
    /// The SQLCipher settings the key needs on every handle (applied by ``apply(to:)``).
    public let cipherSettings: CipherSettings
    /// The data key's version: 1 at creation, one more at each rotation.
    public let version: Int
    let key: SecureBuffer
    /// The shared lock while it is held, and whether the key was released.
    private let lock: Mutex<(held: DatabaseLock?, released: Bool)>

    init(key: SecureBuffer, keyFile: KeyFile, databasePath: String, lock: consuming sending DatabaseLock) {
        self.key = key
        self.cipherSettings = keyFile.cipher
        self.version = keyFile.version
        self.databasePath = databasePath
        self.lock = Mutex((lock, false))
    }

    deinit {
        release()
    }

    /// Keys an SQLite handle the app opened: checks that it is SQLCipher, calls `sqlite3_key`
    /// with the raw key, applies the recorded cipher settings, keeps SQLite's temporary files in
    /// memory (`PRAGMA temp_store = MEMORY`: SQLCipher does not encrypt them), and proves the key
    /// with a first read. Call it right after `sqlite3_open_v2`, before any other statement (a statement
    /// first would leave a new file in plaintext).
    ///
    /// The handle stays the app's: this neither closes it nor keeps it.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` for a handle of an SQLite
    ///   without SQLCipher (the key would be ignored and the app would write plaintext);
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` when the key does not open the file the
    ///   handle has open; ``DBKeyError/Code-swift.struct/invalidConfiguration`` after
    ///   ``release()``. SQLite's codes for the rest.
    public func apply(to handle: OpaquePointer) throws {
        guard !isReleased else {
            throw DBKeyError(
                .invalidConfiguration,
                "This KeyLease was released: ask the manager for the key again (leaseKey()).",
                path: databasePath)
        }
        let connection = DatabaseConnection.borrowing(handle)
        defer { connection.close() }
        try KeyLease.requireSQLCipher(
            cipherVersion: try connection.fetchAll("PRAGMA cipher_version").first?[0].textValue)
        let keyText = try RawKeyText.make(for: key)
        try connection.applyKey(keyText)
        try connection.apply(cipherSettings)
        try connection.keepTemporaryStorageInMemory()
        try connection.proveKey()
        try connection.requirePages()
    }

    /// Refuses a handle whose `PRAGMA cipher_version` is empty: plain SQLite ignores the key.
    static func requireSQLCipher(cipherVersion: String?) throws {
        guard let cipherVersion, !cipherVersion.isEmpty else {
            throw DBKeyError(
                .unsupportedFormat,
                "The SQLite handle is not SQLCipher (PRAGMA cipher_version is empty): it would ignore the key and write plaintext. Link the app's SQLite stack against the same libsqlcipher as DBKey."
            )
        }
    }

    /// Calls `body` with SQLCipher's raw-key text, `x'` + 64 hex digits + `'`, for an API that
    /// takes the key as text (`PRAGMA key`, GRDB's `usePassphrase`). The bytes live in locked
    /// memory and are wiped when `body` returns: do not copy them. Unlike ``apply(to:)``, this
    /// leaves the handle's settings to the caller: set `PRAGMA temp_store = MEMORY` on it too.
    ///
    /// - Throws: What `body` throws.
    public func withRawKeyText<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) throws -> Result {
        let keyText = try RawKeyText.make(for: key)
        return try keyText.withUnsafeBytes(body)
    }

    /// Checks that the key still opens the database — that no handle keyed with it changed the
    /// key behind DBKey's journal (`PRAGMA rekey`, GRDB's `changePassphrase`) — then releases
    /// the lock. Call it when the last handle keyed with this key is closed.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/wrongKey`` saying the key was changed outside
    ///   DBKey (the lock is released all the same); the database's other open errors.
    public func checkAndRelease() throws {
        defer { release() }
        guard !isReleased else { return }
        do {
            try DatabaseConnection.open(
                path: databasePath, key: key, cipher: cipherSettings, create: false
            ).close()
        } catch DBKeyError.Code.wrongKey {
            throw DBKeyError(
                .wrongKey,
                "The key of \(databasePath) was changed outside DBKey: the data key its .key records (version \(version)) no longer opens it. A handle keyed through the seam ran PRAGMA rekey or GRDB's changePassphrase; change keys only with DatabaseKeyManager.rotateKey. Re-key the database back with the handle that changed it, or restore it from a backup.",
                path: databasePath
            )
        }
    }

    /// Releases the shared lock, so that a rotation may start once every other holder has let
    /// go. Later calls do nothing; the key can no longer key handles.
    public func release() {
        lock.withLock { state in
            state.held?.release()
            state.held = nil
            state.released = true
        }
    }

    /// Lets go of the shared lock for a rotation by copy, keeping the key: the handles keyed with
    /// it go on reading while the copy is made, and it still keys new ones (read-only ones: the
    /// copy holds SQLite's write lock) until ``release()``, which must follow before the copy is
    /// swapped in. Call it from ``KeyChangeCoordinator/closeWritersForKeyChange(before:)``.
    public func releaseLockForRotation() {
        lock.withLock { state in
            state.held?.release()
            state.held = nil
        }
    }

    /// Whether ``release()`` was called.
    public var isReleased: Bool {
        lock.withLock { $0.released }
    }

    public var description: String { "KeyLease(\(databasePath), version \(version), redacted)" }
}
