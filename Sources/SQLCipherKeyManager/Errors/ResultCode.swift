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
public struct ResultCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The raw SQLite result code.
    public let rawValue: Int32

    /// Creates a result code from its raw value.
    public init(rawValue: Int32) {
        self.rawValue = rawValue
    }

    /// The primary result code: the least significant 8 bits.
    public var primaryResultCode: ResultCode { ResultCode(rawValue: rawValue & 0xFF) }

    public var description: String { "SQLite result code \(rawValue)" }

    /// Whether `code` is `pattern`, or an extended code of the primary code `pattern`.
    public static func ~= (pattern: ResultCode, code: ResultCode) -> Bool {
        pattern == pattern.primaryResultCode ? pattern == code.primaryResultCode : pattern == code
    }

    public static let SQLITE_OK = ResultCode(rawValue: 0)
    public static let SQLITE_ERROR = ResultCode(rawValue: 1)
    public static let SQLITE_PERM = ResultCode(rawValue: 3)
    public static let SQLITE_BUSY = ResultCode(rawValue: 5)
    public static let SQLITE_LOCKED = ResultCode(rawValue: 6)
    public static let SQLITE_NOMEM = ResultCode(rawValue: 7)
    public static let SQLITE_READONLY = ResultCode(rawValue: 8)
    public static let SQLITE_IOERR = ResultCode(rawValue: 10)
    public static let SQLITE_CORRUPT = ResultCode(rawValue: 11)
    public static let SQLITE_FULL = ResultCode(rawValue: 13)
    public static let SQLITE_CANTOPEN = ResultCode(rawValue: 14)
    public static let SQLITE_CONSTRAINT = ResultCode(rawValue: 19)
    public static let SQLITE_AUTH = ResultCode(rawValue: 23)
    public static let SQLITE_MISMATCH = ResultCode(rawValue: 20)
    public static let SQLITE_MISUSE = ResultCode(rawValue: 21)
    public static let SQLITE_RANGE = ResultCode(rawValue: 25)
    public static let SQLITE_NOTADB = ResultCode(rawValue: 26)
    public static let SQLITE_ROW = ResultCode(rawValue: 100)
    public static let SQLITE_DONE = ResultCode(rawValue: 101)
}
