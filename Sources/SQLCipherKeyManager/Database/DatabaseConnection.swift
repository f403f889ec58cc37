internal import CSQLCipher

/// An open, keyed connection to an SQLCipher database.
///
/// You get one from ``DatabaseKeyManager/open()``: by then the key has been applied, the cipher
/// settings recorded in the `.key` file set, and the key proven by a first read. A connection
/// is not thread-safe: use it from one task or thread at a time, as you would an `sqlite3*`.
///
/// ```swift
/// let db = try await manager.open()
/// try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
/// try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
/// let rows = try db.fetchAll("SELECT id, body FROM note")
/// ```
///
/// The connection is closed when it is released, or earlier by ``close()``.
public final class DatabaseConnection {
    /// The path of the database file.
    public let path: String

    private var handle: OpaquePointer?
    private let onClose: (() -> Void)?
    /// Whether ``close()`` closes the handle: `false` for a handle the app owns.
    private let ownsHandle: Bool
    /// The authorizer that refuses key and format changes, on connections handed to users.
    private var keyChangeGuard: KeyChangeGuard?
    /// Statements prepared from SQL strings of exactly one statement, kept for the next run of
    /// the same SQL (a pool's reads, `BEGIN` and `COMMIT`); finalised when the connection closes.
    private var statementCache: [String: StatementHandle] = [:]
    private static let statementCacheLimit = 64

    private init(handle: OpaquePointer, path: String, onClose: (() -> Void)?, ownsHandle: Bool = true) {
        self.handle = handle
        self.path = path
        self.onClose = onClose
        self.ownsHandle = ownsHandle
    }

    /// A connection over a handle someone else opened and will close: ``close()`` only lets go.
    static func borrowing(_ handle: OpaquePointer) -> DatabaseConnection {
        let path = sqlite3_db_filename(handle, "main").map { String(cString: $0) } ?? ""
        return DatabaseConnection(handle: handle, path: path, onClose: nil, ownsHandle: false)
    }

    deinit {
        close()
    }

    /// How a connection is keyed when it opens.
    enum Keying {
        /// DBKey's form: a raw 256-bit key and the recorded cipher settings.
        case raw(SecureBuffer, CipherSettings)
        /// Another app's passphrase (run through PBKDF2 by SQLCipher), the format to open it in,
        /// and its settings.
        case passphrase(SecureBuffer, format: Int, PassphraseCipherSettings)
        /// No key: a plaintext SQLite database.
        case plaintext
    }

    /// Opens the database at `path`, applies `keying`, and proves it by reading `sqlite_master`.
    ///
    /// The key is applied right after `sqlite3_open_v2` and before any statement (a statement
    /// first would leave a new file in plaintext), then the cipher settings, each read back
    /// because SQLCipher ignores pragmas it does not know.
    ///
    /// - Parameters:
    ///   - path: The database file.
    ///   - keying: The key, or none.
    ///   - create: Whether a missing file is created.
    ///   - busyTimeout: How long a statement waits for another connection's lock (a writer
    ///     committing, a WAL checkpoint) before failing with `SQLITE_BUSY`.
    ///   - onClose: Called once when the connection closes, to release what the caller
    ///     holds for its lifetime (a lock).
    ///   - proving: Whether the key is proven by a first read. Only a caller that proved it on
    ///     another connection leaves this out (an in-place rekey, whose connection must run
    ///     nothing first).
    /// - Throws: ``DBKeyError/Code-swift.struct/wrongKey`` with `SQLITE_NOTADB` when the first
    ///   read fails: the caller tells a wrong key from a damaged file. Other codes for other
    ///   failures.
    static func open(
        path: String,
        keying: Keying,
        create: Bool = false,
        busyTimeout: Duration = defaultBusyTimeout,
        onClose: (() -> Void)? = nil,
        proving: Bool = true
    ) throws -> DatabaseConnection {
        var handle: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX
        let openCode = sqlite3_open_v2(path, &handle, flags, nil)
        guard openCode == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            onClose?()
            throw DatabaseConnection.error(
                code: openCode,
                message: "Cannot open the database at \(path): \(message)."
            )
        }
        // From here on, deinit closes the handle and runs onClose on every failure path.
        let connection = DatabaseConnection(handle: handle, path: path, onClose: onClose)
        sqlite3_extended_result_codes(handle, 1)
        let (seconds, attoseconds) = busyTimeout.components
        sqlite3_busy_timeout(handle, Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        switch keying {
        case .raw(let key, let settings):
            let keyText = try RawKeyText.make(for: key)
            try connection.applyKey(keyText)
            try connection.apply(settings)
            try connection.keepTemporaryStorageInMemory()
            guard proving else { return connection }
            if !create {
                try connection.proveKey()
                try connection.requirePages()
                return connection
            }
        case .passphrase(let passphrase, let format, let settings):
            try connection.applyKey(passphrase)
            try connection.apply(settings, format: format)
            try connection.keepTemporaryStorageInMemory()
        case .plaintext:
            try connection.keepTemporaryStorageInMemory()
        }
        try connection.proveKey()
        return connection
    }

    /// How long a connection waits for another's lock unless told otherwise: long enough for
    /// another process's commit or checkpoint, short enough to report a stuck holder.
    static let defaultBusyTimeout = Duration.seconds(5)

    /// Opens the database with DBKey's raw 256-bit key and cipher settings.
    static func open(
        path: String,
        key: SecureBuffer,
        cipher: CipherSettings,
        create: Bool,
        busyTimeout: Duration = defaultBusyTimeout,
        onClose: (() -> Void)? = nil
    ) throws -> DatabaseConnection {
        try open(path: path, keying: .raw(key, cipher), create: create, busyTimeout: busyTimeout, onClose: onClose)
    }

    /// Applies key bytes (`sqlite3_key`): raw-key text or a passphrase.
    func applyKey(_ key: SecureBuffer) throws {
        let handle = try liveHandle()
        let code = key.withUnsafeBytes { bytes in
            sqlite3_key(handle, bytes.baseAddress, Int32(bytes.count))
        }
        try check(code, "applying the key (sqlite3_key)")
    }

    /// Keeps SQLite's temporary storage — temporary tables and indices, sorts that spill,
    /// statement journals, `VACUUM`'s copy, `ATTACH ''` — in memory (`PRAGMA temp_store =
    /// MEMORY`): SQLCipher does not encrypt those files, and SQLite's own default is a file.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` for an SQLite built with
    ///   `SQLITE_TEMP_STORE=0`, which ignores the pragma and always uses files.
    func keepTemporaryStorageInMemory(alwaysOnDisk: Bool = SQLCipherEngine.tempStoreAlwaysOnDisk) throws {
        guard !alwaysOnDisk else {
            throw DBKeyError(
                .unsupportedFormat,
                "The linked SQLCipher was built with SQLITE_TEMP_STORE=0: it writes temporary tables and sorts of \(path) to unencrypted files whatever a connection asks. Link a build with SQLITE_TEMP_STORE=2 or 3 (see \"SQLCipher Versions\" in DBKey's documentation).",
                path: path)
        }
        try execute("PRAGMA temp_store = MEMORY")
    }

    /// Closes the connection (`sqlite3_close_v2`). Later calls do nothing.
    ///
    /// Statements still alive are finalised when they are released.
    public func close() {
        guard let handle else { return }
        for cached in statementCache.values {
            sqlite3_finalize(cached.handle)
        }
        statementCache = [:]
        if ownsHandle {
            sqlite3_close_v2(handle)
        }
        self.handle = nil
        onClose?()
    }

    /// Refuses, from now on, the SQL that would change the key or format behind the journal
    /// (see ``KeyChangeGuard``). Installed once the connection is keyed and proven.
    func guardAgainstKeyChanges() throws {
        let guarding = KeyChangeGuard()
        let handle = try liveHandle()
        guarding.install(on: handle)
        try KeyChangeGuard.replaceExport(on: handle)
        keyChangeGuard = guarding
    }

    /// Why the guard refused the statement that just failed, if it refused one.
    var keyChangeRefusal: String? { keyChangeGuard?.refusal }

    /// Forgets the guard's last refusal, before a statement is prepared or run.
    func forgetKeyChangeRefusal() {
        keyChangeGuard?.reset()
    }

    /// Whether ``close()`` has been called.
    public var isClosed: Bool { handle == nil }

    // MARK: - Statements

    /// Prepares one statement for repeated use (`sqlite3_prepare_v2`).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/sqlite`` when the SQL is invalid or holds more
    ///   than one statement.
    public func prepare(_ sql: String) throws -> PreparedStatement {
        var statements: [PreparedStatement] = []
        try forEachStatement(in: sql) { statements.append($0) }
        guard statements.count == 1 else {
            throw DBKeyError(.sqlite, "Expected exactly one SQL statement, found \(statements.count).")
        }
        return statements[0]
    }

    /// Runs every statement in `sql`, binding `arguments` in order across them.
    ///
    /// Each statement takes as many arguments as it has `?` parameters; all must be used.
    ///
    /// - Parameters:
    ///   - sql: One or more statements.
    ///   - arguments: Values for the `?` parameters, in order across the statements.
    ///   - onRow: Called with each row any statement returns.
    /// - Throws: ``DBKeyError`` for invalid SQL, an argument count mismatch, or a failed step.
    public func execute(
        _ sql: String,
        arguments: [SQLValue] = [],
        onRow: (ResultRow) throws -> Void = { _ in }
    ) throws {
        try execute(sql, arguments: arguments, afterStatement: { _ in }, onRow: onRow)
    }

    /// Runs every statement in `sql` and hands each result — the column names of a statement
    /// that returns columns, and its rows — to `body`, one statement at a time, so that two
    /// results are never merged and duplicate column names are kept.
    ///
    /// ```swift
    /// try db.forEachResult("SELECT 1 AS a, 2 AS a; SELECT 3") { columns, rows in
    ///     print(columns, rows.count)
    /// }
    /// ```
    ///
    /// - Throws: ``DBKeyError`` for invalid SQL, an argument count mismatch, or a failed step.
    public func forEachResult(
        _ sql: String,
        arguments: [SQLValue] = [],
        _ body: (_ columnNames: [String], _ rows: [ResultRow]) throws -> Void
    ) throws {
        var rows: [ResultRow] = []
        try execute(
            sql, arguments: arguments,
            afterStatement: { statement in
                // The names as the statement ran: a schema change re-prepares it.
                if !statement.columnNames.isEmpty { try body(statement.columnNames, rows) }
                rows = []
            },
            onRow: { rows.append($0) })
    }

    private func execute(
        _ sql: String,
        arguments: [SQLValue],
        afterStatement: (PreparedStatement) throws -> Void,
        onRow: (ResultRow) throws -> Void
    ) throws {
        var remaining = arguments[...]
        // Each statement is prepared only after the one before it ran: a script may create a
        // table and then insert into it.
        try forEachStatement(in: sql, cached: true) { statement in
            let taken = remaining.prefix(statement.parameterCount)
            guard taken.count == statement.parameterCount else {
                throw DBKeyError(
                    .sqlite,
                    "Not enough arguments: the SQL has more ? parameters than the \(arguments.count) given."
                )
            }
            remaining = remaining.dropFirst(taken.count)
            try statement.run(arguments: Array(taken), onRow: onRow)
            try afterStatement(statement)
        }
        guard remaining.isEmpty else {
            throw DBKeyError(
                .sqlite,
                "Too many arguments: \(arguments.count) given, \(arguments.count - remaining.count) used."
            )
        }
    }

    /// Runs `sql`, one statement, and returns what `decode` makes of each row, read straight
    /// from SQLite with no ``ResultRow`` built; the statement is kept prepared for the next call.
    ///
    /// ```swift
    /// let notes = try db.fetch("SELECT id, body FROM note WHERE id > ?", arguments: [0]) { row in
    ///     (id: row.integer(0), body: row.text(1) ?? "")
    /// }
    /// ```
    ///
    /// - Throws: ``DBKeyError`` for invalid SQL, SQL of more than one statement (refused before
    ///   it runs), an argument count mismatch, or a failed step; what `decode` throws.
    public func fetch<Row>(_ sql: String, arguments: [SQLValue] = [], _ decode: (RowView) throws -> Row) throws
        -> [Row]
    {
        var rows: [Row]?
        try forEachStatement(in: sql, cached: true, single: true) { statement in
            rows = try statement.fetch(arguments: arguments, decode)
        }
        return rows ?? []
    }

    /// Runs `sql` and returns every row it produces.
    ///
    /// - Throws: ``DBKeyError`` for invalid SQL, an argument count mismatch, or a failed step.
    public func fetchAll(_ sql: String, arguments: [SQLValue] = []) throws -> [ResultRow] {
        var rows: [ResultRow] = []
        try execute(sql, arguments: arguments) { rows.append($0) }
        return rows
    }

    /// Runs `body` inside a transaction: committed when it returns, rolled back when it throws.
    ///
    /// - Throws: What `body` throws, or ``DBKeyError`` when BEGIN or COMMIT fails.
    public func inTransaction<Result>(
        _ kind: TransactionKind = .deferred,
        _ body: () throws -> Result
    ) throws -> Result {
        try execute("BEGIN \(kind.rawValue) TRANSACTION")
        let result: Result
        do {
            result = try body()
        } catch {
            // The transaction may already be gone (SQLite rolls back on some errors by itself).
            if !isAutocommit {
                try? execute("ROLLBACK")
            }
            throw error
        }
        do {
            try execute("COMMIT")
        } catch {
            if !isAutocommit {
                try? execute("ROLLBACK")
            }
            throw error
        }
        return result
    }

    /// Whether no transaction is open (`sqlite3_get_autocommit`).
    public var isAutocommit: Bool {
        guard let handle else { return true }
        return sqlite3_get_autocommit(handle) != 0
    }

    /// The rowid of the last inserted row (`sqlite3_last_insert_rowid`).
    public var lastInsertedRowID: Int64 {
        guard let handle else { return 0 }
        return sqlite3_last_insert_rowid(handle)
    }

    /// The number of rows the last statement changed (`sqlite3_changes`).
    public var changesCount: Int {
        guard let handle else { return 0 }
        return Int(sqlite3_changes(handle))
    }

    /// The problems `PRAGMA integrity_check` reports; empty when the database is sound.
    ///
    /// On SQLCipher 4, `PRAGMA cipher_integrity_check` runs first: it checks every page's HMAC
    /// and names the pages that fail ("HMAC verification failed for page 2"), where SQLite's
    /// own check would stop at the first with "SQL logic error".
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseDamaged`` when pages cannot even be read.
    public func integrityCheck() throws -> [String] {
        if try SQLCipherEngine.linked().majorVersion >= 4 {
            let pageProblems = try fetchAll("PRAGMA cipher_integrity_check").compactMap { $0[0].textValue }
            if !pageProblems.isEmpty { return pageProblems }
        }
        let messages = try fetchAll("PRAGMA integrity_check").compactMap { $0[0].textValue }
        return messages == ["ok"] ? [] : messages
    }

    /// The SQLCipher version linked into this process (`PRAGMA cipher_version`).
    public func cipherVersion() throws -> String {
        guard let version = try fetchAll("PRAGMA cipher_version").first?[0].textValue else {
            throw DBKeyError(
                .unsupportedFormat,
                "The SQLite library in this process is not SQLCipher: PRAGMA cipher_version gave no answer."
            )
        }
        return version
    }

    // MARK: - Internals

    /// Prepares the statements of `sql` one at a time, each after `body` returned for the one
    /// before (`sqlite3_prepare_v2`).
    ///
    /// - Parameter cached: Whether SQL of exactly one statement is kept prepared for the next
    ///   call with the same SQL. A cached statement is taken out of the cache while it runs, so
    ///   the same SQL run from inside `body` gets a statement of its own.
    ///
    /// - Parameter single: Whether SQL of more than one statement is refused, before any runs.
    func forEachStatement(
        in sql: String, cached: Bool = false, single: Bool = false, _ body: (PreparedStatement) throws -> Void
    ) throws {
        let handle = try liveHandle()
        let cached = cached && StatementHandle.countsReprepares
        if cached, let entry = statementCache.removeValue(forKey: sql) {
            let statement = PreparedStatement(connection: self, prepared: entry, ownsHandle: false)
            defer { keep(statement.prepared, for: sql) }
            try body(statement)
            return
        }
        try sql.utf8CString.withUnsafeBufferPointer { buffer in
            let start = buffer.baseAddress!
            let end = start + buffer.count - 1
            var cursor: UnsafePointer<CChar>? = start
            while let current = cursor, current < end {
                var statementHandle: OpaquePointer?
                var tail: UnsafePointer<CChar>?
                forgetKeyChangeRefusal()
                let code = sqlite3_prepare_v2(handle, current, Int32(end - current), &statementHandle, &tail)
                if code != SQLITE_OK, let refusal = keyChangeRefusal {
                    throw DBKeyError(.sqlite, refusal, resultCode: .SQLITE_AUTH)
                }
                try check(code, "preparing a statement")
                if single, let tail, tail < end, !Self.isBlank(tail, end: end, on: handle) {
                    sqlite3_finalize(statementHandle)
                    throw DBKeyError(.sqlite, "fetch runs one statement; the SQL holds more. Nothing was run.")
                }
                // A null statement with OK is whitespace or a comment: nothing to run.
                if let statementHandle {
                    if cached && current == start && tail == end {
                        let statement = PreparedStatement(
                            connection: self, prepared: StatementHandle(handle: statementHandle), ownsHandle: false)
                        defer { keep(statement.prepared, for: sql) }
                        try body(statement)
                    } else {
                        try body(
                            PreparedStatement(
                                connection: self, prepared: StatementHandle(handle: statementHandle), ownsHandle: true
                            ))
                    }
                }
                cursor = tail
            }
        }
    }

    /// Whether the SQL from `start` to `end` holds no statement (only spaces, `;` and comments):
    /// SQLite prepares it to nothing. Preparing runs nothing.
    private static func isBlank(_ start: UnsafePointer<CChar>, end: UnsafePointer<CChar>, on handle: OpaquePointer)
        -> Bool
    {
        var remaining = start
        while remaining < end {
            var probe: OpaquePointer?
            var tail: UnsafePointer<CChar>?
            // Not valid on its own (it may need what the first statement makes): it is SQL.
            guard sqlite3_prepare_v2(handle, remaining, Int32(end - remaining), &probe, &tail) == SQLITE_OK else {
                return false
            }
            if probe != nil {
                sqlite3_finalize(probe)
                return false
            }
            guard let next = tail, next > remaining else { return true }
            remaining = next
        }
        return true
    }

    /// Puts a statement back in the cache, or finalises it when the connection has closed, the
    /// cache is full, or the same SQL was cached meanwhile.
    private func keep(_ entry: StatementHandle, for sql: String) {
        guard handle != nil, statementCache[sql] == nil, statementCache.count < Self.statementCacheLimit else {
            sqlite3_finalize(entry.handle)
            return
        }
        statementCache[sql] = entry
    }

    func liveHandle() throws -> OpaquePointer {
        guard let handle else {
            throw DBKeyError(.sqlite, "The connection to \(path) is closed.", resultCode: .SQLITE_MISUSE)
        }
        return handle
    }

    /// Turns an SQLite return code into a typed error, on the spot.
    func check(_ code: Int32, _ action: @autoclosure () -> String) throws {
        guard code != SQLITE_OK else { return }
        let detail = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "no connection"
        throw DatabaseConnection.error(
            code: code,
            message: "SQLite failed \(action()) on \(path): \(detail)."
        )
    }

    static func error(code: Int32, message: String) -> DBKeyError {
        let resultCode = SQLiteResultCode(rawValue: code)
        switch resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return DBKeyError(
                .databaseDamaged,
                "\(message) The database is damaged: restore it from a backup.",
                resultCode: resultCode
            )
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            return DBKeyError(
                .databaseInUse,
                "\(message) Another connection holds the database; try again when it is closed.",
                resultCode: resultCode
            )
        case .SQLITE_FULL:
            return DBKeyError(.io, "\(message) The disk is full: free space and try again.", resultCode: resultCode)
        case .SQLITE_IOERR, .SQLITE_CANTOPEN, .SQLITE_PERM, .SQLITE_READONLY:
            return DBKeyError(.io, message, resultCode: resultCode)
        default:
            return DBKeyError(.sqlite, message, resultCode: resultCode)
        }
    }

    /// An existing managed database has at least one page. An empty file reads as a new, empty
    /// database with any key — and its first write would make one with a new salt — so it is
    /// refused as damaged instead. The file's size answers (an `fstat` through SQLite's own
    /// handle); only an empty file, whose pages may all be in a WAL, is asked `page_count`.
    func requirePages() throws {
        guard try DatabaseFileReader(self).size() == 0 else { return }
        guard try fetchAll("PRAGMA page_count").first?[0].integerValue ?? 0 > 0 else {
            throw DBKeyError(
                .databaseDamaged,
                "\(path) is empty, but its .key file belongs to an existing database: the file was truncated or replaced. Restore it from a backup; DBKey will not create a new database in its place.",
                path: path
            )
        }
    }

    /// Proves the key on a connection that has read nothing yet. SQLCipher does not check the
    /// key in `sqlite3_key`; the first read does, and preparing a statement on `sqlite_master`
    /// is one: it loads the schema, reading page 1 and every page of `sqlite_master` and
    /// checking their HMACs. Nothing is run, so the app's first statement is the connection's
    /// first read transaction, as on a bare handle.
    ///
    /// A wrong key and a damaged first page both fail with `SQLITE_NOTADB`. SQLCipher 4 answers
    /// a key that fails page 1 of a file with a plaintext header (whose SQLite header reads
    /// fine) with `SQLITE_ERROR`; for this fixed statement, both mean the key does not open the
    /// file.
    func proveKey() throws {
        do {
            _ = try prepare("SELECT 1 FROM sqlite_master")
        } catch let error as DBKeyError where error.resultCode == .SQLITE_NOTADB || error.resultCode == .SQLITE_ERROR {
            throw DBKeyError(
                .wrongKey,
                "The key does not open \(path), or its first page is damaged.",
                resultCode: .SQLITE_NOTADB
            )
        }
    }
}

/// How a transaction takes its locks.
public enum TransactionKind: String, Sendable {
    /// Locks are taken by the first read or write.
    case deferred = "DEFERRED"
    /// The write lock is taken at once.
    case immediate = "IMMEDIATE"
    /// The exclusive lock is taken at once.
    case exclusive = "EXCLUSIVE"
}
