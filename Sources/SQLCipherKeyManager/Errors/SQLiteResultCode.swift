/// An SQLite result code.
///
/// Primary codes match their extended codes with `~=`, as in GRDB:
///
/// ```swift
/// switch error.resultCode {
/// case .SQLITE_CONSTRAINT?: print("a constraint failed")  // any constraint violation
/// default: break
/// }
/// ```
public struct SQLiteResultCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The raw SQLite result code.
    public let rawValue: Int32

    /// Creates a result code from its raw value.
    public init(rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// The primary result code: the least significant 8 bits.
    public var primaryResultCode: SQLiteResultCode { SQLiteResultCode(rawValue: rawValue & 0xFF) }

    public var description: String { "SQLite result code \(rawValue)" }

    /// Whether `code` is `pattern`, or an extended code of the primary code `pattern`.
    public static func ~= (pattern: SQLiteResultCode, code: SQLiteResultCode) -> Bool {
        pattern == pattern.primaryResultCode ? pattern == code.primaryResultCode : pattern == code
    }

    public static let SQLITE_OK = SQLiteResultCode(rawValue: 0)
    public static let SQLITE_ERROR = SQLiteResultCode(rawValue: 1)
    public static let SQLITE_PERM = SQLiteResultCode(rawValue: 3)
    public static let SQLITE_BUSY = SQLiteResultCode(rawValue: 5)
    public static let SQLITE_LOCKED = SQLiteResultCode(rawValue: 6)
    public static let SQLITE_NOMEM = SQLiteResultCode(rawValue: 7)
    public static let SQLITE_READONLY = SQLiteResultCode(rawValue: 8)
    public static let SQLITE_IOERR = SQLiteResultCode(rawValue: 10)
    public static let SQLITE_CORRUPT = SQLiteResultCode(rawValue: 11)
    public static let SQLITE_FULL = SQLiteResultCode(rawValue: 13)
    public static let SQLITE_CANTOPEN = SQLiteResultCode(rawValue: 14)
    public static let SQLITE_CONSTRAINT = SQLiteResultCode(rawValue: 19)
    public static let SQLITE_AUTH = SQLiteResultCode(rawValue: 23)
    public static let SQLITE_MISMATCH = SQLiteResultCode(rawValue: 20)
    public static let SQLITE_MISUSE = SQLiteResultCode(rawValue: 21)
    public static let SQLITE_RANGE = SQLiteResultCode(rawValue: 25)
    public static let SQLITE_NOTADB = SQLiteResultCode(rawValue: 26)
    public static let SQLITE_ROW = SQLiteResultCode(rawValue: 100)
    public static let SQLITE_DONE = SQLiteResultCode(rawValue: 101)
}
