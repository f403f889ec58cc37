import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct SQLCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sql",
        abstract: "Run SQL statements on the encrypted database and print the rows they return.",
        discussion: """
            Rows are printed tab-separated, one a line; in text, tab, newline and backslash are \
            escaped as \\t, \\n and \\\\; NULL prints as an empty field and a blob as x'HEX'. \
            With --json, one array with an object per statement that returns columns: \
            {"columns": [names], "rows": [[values]]} (a blob as {"base64": …}), so that \
            results are never merged and duplicate column names are kept.
            """
    )

    @OptionGroup var options: DatabaseOptions

    @Argument(help: "One or more SQL statements separated by semicolons.")
    var sql: String

    @Flag(help: "Print a header line with the column names before each statement's rows.")
    var header = false

    func run() async throws {
        try await options.run { manager in
            let connection = try await manager.open()
            defer { connection.close() }
            var results: [StatementResult] = []
            try connection.forEachResult(sql) { columns, rows in
                if options.json {
                    results.append(StatementResult(columns: columns, rows: rows.map { $0.values.map(Self.json) }))
                    return
                }
                if header {
                    print(columns.map(Self.escaped).joined(separator: "\t"))
                }
                for row in rows {
                    print(row.values.map(Self.text).joined(separator: "\t"))
                }
            }
            if options.json {
                Output.printJSON(results)
            }
        }
    }

    private static func text(_ value: SQLValue) -> String {
        switch value {
        case .null: ""
        case .integer(let integer): String(integer)
        case .real(let real): String(real)
        case .text(let text): escaped(text)
        case .blob(let bytes): "x'" + bytes.map { String(format: "%02x", $0) }.joined() + "'"
        }
    }

    private static func escaped(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\")
            .replacingOccurrences(of: "\t", with: "\\t")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    /// What one statement returned, as `--json` prints it.
    private struct StatementResult: Encodable {
        let columns: [String]
        let rows: [[JSONValue]]
    }

    /// One value of a row: `null`, a number, a string, or a blob as `{"base64": …}`.
    private static func json(_ value: SQLValue) -> JSONValue {
        switch value {
        case .null: .null
        case .integer(let integer): .integer(integer)
        case .real(let real): .number(real)
        case .text(let text): .string(text)
        case .blob(let bytes): .object(["base64": .string(Data(bytes).base64EncodedString())])
        }
    }
}
