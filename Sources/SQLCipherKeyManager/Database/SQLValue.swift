/// A value stored in or read from an SQLite column: one of SQLite's five storage classes.
///
/// Literals convert, so arguments read naturally:
///
/// ```swift
/// try db.execute("INSERT INTO note(id, body, score) VALUES (?, ?, ?)", arguments: [1, "hello", 0.5])
/// ```
public enum SQLValue: Sendable, Hashable {
    /// SQL `NULL`.
    case null
    /// A 64-bit signed integer.
    case integer(Int64)
    /// A 64-bit IEEE floating-point number.
    case real(Double)
    /// UTF-8 text.
    case text(String)
    /// Bytes, stored as they are.
    case blob([UInt8])
}

extension SQLValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension SQLValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) { self = .integer(value) }
}

extension SQLValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .real(value) }
}

extension SQLValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
}

extension SQLValue {
    /// The value as an integer, when it is one.
    public var integerValue: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    /// The value as text, when it is text.
    public var textValue: String? {
        if case .text(let value) = self { return value }
        return nil
    }
}

/// One row of a query result.
public struct ResultRow: Sendable, Hashable {
    /// The result's column names, in order.
    public let columnNames: [String]
    /// The row's values, in column order.
    public let values: [SQLValue]

    /// Creates a row.
    public init(columnNames: [String], values: [SQLValue]) {
        precondition(columnNames.count == values.count, "a row needs one value per column")
        self.columnNames = columnNames
        self.values = values
    }

    /// The value at a column index.
    public subscript(index: Int) -> SQLValue { values[index] }

    /// The value of the first column with this name, or `nil` when there is no such column.
    public subscript(name: String) -> SQLValue? {
        columnNames.firstIndex(of: name).map { values[$0] }
    }
}
