internal import CSQLCipher

/// A prepared SQL statement, for running the same SQL many times with different arguments.
///
/// ```swift
/// let insert = try db.prepare("INSERT INTO reading(sensor, value) VALUES (?, ?)")
/// try db.inTransaction {
///     for (sensor, value) in readings {
///         try insert.execute(arguments: [.text(sensor), .real(value)])
///     }
/// }
/// ```
///
/// Argument values are never copied into error messages.
public final class PreparedStatement {
    /// The number of `?` parameters (`sqlite3_bind_parameter_count`).
    public var parameterCount: Int { prepared.parameterCount }
    /// The names of the result columns (`sqlite3_column_name`), read again when a schema change
    /// makes SQLite re-prepare the statement as it runs.
    public var columnNames: [String] { prepared.columnNames }

    private let connection: DatabaseConnection
    private var handle: OpaquePointer { prepared.handle }
    /// The handle and what was read from it.
    private(set) var prepared: StatementHandle
    /// Whether the statement finalises its handle; `false` for one the connection's cache owns.
    private let ownsHandle: Bool

    /// A statement over a prepared handle: its own (finalised with it), or one the connection's
    /// statement cache owns.
    init(connection: DatabaseConnection, prepared: StatementHandle, ownsHandle: Bool) {
        self.connection = connection
        self.prepared = prepared
        self.ownsHandle = ownsHandle
    }

    deinit {
        if ownsHandle {
            sqlite3_finalize(handle)
        }
    }

    /// Runs the statement with `arguments`, discarding any rows.
    ///
    /// - Throws: ``DBKeyError`` when the arguments do not match or a step fails.
    public func execute(arguments: [SQLValue] = []) throws {
        try run(arguments: arguments) { _ in }
    }

    /// Runs the statement with `arguments` and returns its rows.
    ///
    /// - Throws: ``DBKeyError`` when the arguments do not match or a step fails.
    public func fetchAll(arguments: [SQLValue] = []) throws -> [ResultRow] {
        var rows: [ResultRow] = []
        try run(arguments: arguments) { rows.append($0) }
        return rows
    }

    /// Runs the statement with `arguments` and returns what `decode` makes of each row, read
    /// straight from SQLite (no ``ResultRow`` is built).
    ///
    /// - Throws: ``DBKeyError`` when the arguments do not match or a step fails; what `decode`
    ///   throws.
    public func fetch<Row>(arguments: [SQLValue] = [], _ decode: (RowView) throws -> Row) throws -> [Row] {
        var rows: [Row] = []
        try step(arguments: arguments) { rows.append(try decode(RowView(handle: handle))) }
        return rows
    }

    func run(arguments: [SQLValue], onRow: (ResultRow) throws -> Void) throws {
        try step(arguments: arguments) { try onRow(currentRow()) }
    }

    /// Binds `arguments` and steps the statement to its end, calling `onRow` at each row.
    private func step(arguments: [SQLValue], onRow: () throws -> Void) throws {
        try bind(arguments)
        defer { sqlite3_reset(handle) }
        connection.forgetKeyChangeRefusal()
        var firstStep = true
        while true {
            let code = sqlite3_step(handle)
            // A schema change made SQLite re-prepare the statement as it stepped (another
            // connection's change is seen only then): its columns may differ. An SQLite that
            // does not count re-preparations is asked again after every first step.
            if StatementHandle.reprepareCount(handle) != prepared.reprepares
                || (firstStep && !StatementHandle.countsReprepares)
            {
                prepared = StatementHandle(handle: handle)
            }
            firstStep = false
            switch code {
            case SQLITE_ROW:
                try onRow()
            case SQLITE_DONE:
                return
            default:
                // A statement can be refused while it runs: VACUUM INTO attaches its target then.
                if let refusal = connection.keyChangeRefusal {
                    throw DBKeyError(.sqlite, refusal, resultCode: .SQLITE_AUTH)
                }
                // sqlite3_reset returns the step's error code with sqlite3_errmsg still set.
                try connection.check(code, "running a statement")
                return
            }
        }
    }

    private func bind(_ arguments: [SQLValue]) throws {
        guard arguments.count == parameterCount else {
            throw DBKeyError(
                .sqlite,
                "The statement has \(parameterCount) parameters but \(arguments.count) arguments were given.",
                resultCode: .SQLITE_RANGE
            )
        }
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
        for (offset, value) in arguments.enumerated() {
            let index = Int32(offset + 1)
            let code: Int32
            switch value {
            case .null:
                code = sqlite3_bind_null(handle, index)
            case .integer(let integer):
                code = sqlite3_bind_int64(handle, index, integer)
            case .real(let real):
                code = sqlite3_bind_double(handle, index, real)
            case .text(var text):
                // The exact UTF-8 length, not -1: text may contain NUL characters.
                code = text.withUTF8 { utf8 in
                    // An empty buffer may have no address, which SQLite would bind as NULL.
                    guard let base = utf8.baseAddress else {
                        return sqlite3_bind_text(handle, index, "", 0, sqliteTransient)
                    }
                    return base.withMemoryRebound(to: CChar.self, capacity: utf8.count) {
                        sqlite3_bind_text(handle, index, $0, Int32(utf8.count), sqliteTransient)
                    }
                }
            case .blob(let bytes):
                code = bytes.withUnsafeBytes { buffer in
                    // A zero-length blob must still be a blob, not NULL: zeroblob(0) says so.
                    buffer.isEmpty
                        ? sqlite3_bind_zeroblob(handle, index, 0)
                        : sqlite3_bind_blob(handle, index, buffer.baseAddress, Int32(buffer.count), sqliteTransient)
                }
            }
            try connection.check(code, "binding argument \(index)")
        }
    }

    private func currentRow() -> ResultRow {
        let values = (0..<Int32(columnNames.count)).map { column -> SQLValue in
            switch sqlite3_column_type(handle, column) {
            case SQLITE_INTEGER:
                return .integer(sqlite3_column_int64(handle, column))
            case SQLITE_FLOAT:
                return .real(sqlite3_column_double(handle, column))
            case SQLITE_TEXT:
                let count = Int(sqlite3_column_bytes(handle, column))
                guard let text = sqlite3_column_text(handle, column) else { return .text("") }
                return .text(String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self))
            case SQLITE_BLOB:
                let count = Int(sqlite3_column_bytes(handle, column))
                guard let blob = sqlite3_column_blob(handle, column) else { return .blob([]) }
                return .blob(Array(UnsafeRawBufferPointer(start: blob, count: count)))
            default:
                return .null
            }
        }
        return ResultRow(columnNames: columnNames, values: values)
    }
}

/// The row a statement is on, read column by column straight from SQLite: what
/// ``PreparedStatement/fetch(arguments:_:)`` and ``DatabaseConnection/fetch(_:arguments:_:)``
/// hand their `decode` closure. Valid only inside that call.
public struct RowView {
    fileprivate let handle: OpaquePointer

    /// The number of columns.
    public var columnCount: Int { Int(sqlite3_column_count(handle)) }

    /// Whether the column is `NULL`.
    public func isNull(_ column: Int) -> Bool { sqlite3_column_type(handle, Int32(column)) == SQLITE_NULL }

    /// The column as an integer, with SQLite's conversions (`NULL` is 0).
    public func integer(_ column: Int) -> Int64 { sqlite3_column_int64(handle, Int32(column)) }

    /// The column as a floating-point number, with SQLite's conversions (`NULL` is 0).
    public func real(_ column: Int) -> Double { sqlite3_column_double(handle, Int32(column)) }

    /// The column as text, with SQLite's conversions; `nil` for `NULL`.
    public func text(_ column: Int) -> String? {
        guard let text = sqlite3_column_text(handle, Int32(column)) else { return nil }
        let count = Int(sqlite3_column_bytes(handle, Int32(column)))
        return String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self)
    }

    /// The column as bytes; `nil` for `NULL`.
    public func blob(_ column: Int) -> [UInt8]? {
        guard !isNull(column) else { return nil }
        let count = Int(sqlite3_column_bytes(handle, Int32(column)))
        guard let blob = sqlite3_column_blob(handle, Int32(column)) else { return [] }
        return Array(UnsafeRawBufferPointer(start: blob, count: count))
    }
}

/// SQLite's SQLITE_TRANSIENT: copy the bound bytes before the bind call returns.
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A prepared statement's handle, and what was read from it when it was prepared.
struct StatementHandle {
    let handle: OpaquePointer
    let parameterCount: Int
    let columnNames: [String]
    /// How many times SQLite had re-prepared the statement when the names were read.
    let reprepares: Int32

    /// Whether SQLite counts re-preparations (`SQLITE_STMTSTATUS_REPREPARE`, SQLite 3.20): only
    /// then can a statement tell cheaply that a schema change re-prepared it, so only then are
    /// statements kept for reuse (not on SQLCipher 3.4.1, on SQLite 3.15.2).
    static let countsReprepares = sqlite3_libversion_number() >= 3_020_000

    /// `sqlite3_stmt_status(SQLITE_STMTSTATUS_REPREPARE)`; the constant is not in SQLite 3.15's
    /// header.
    static func reprepareCount(_ handle: OpaquePointer) -> Int32 {
        countsReprepares ? sqlite3_stmt_status(handle, 5, 0) : 0
    }

    init(handle: OpaquePointer) {
        self.handle = handle
        self.reprepares = Self.reprepareCount(handle)
        self.parameterCount = Int(sqlite3_bind_parameter_count(handle))
        self.columnNames = (0..<sqlite3_column_count(handle)).map { index in
            sqlite3_column_name(handle, index).map { String(cString: $0) } ?? ""
        }
    }
}
