import CSQLCipher
import Foundation
import Testing

@testable import SQLCipherKeyManager

@Suite("SQLCipher connection", .tags(.engine, .core))
struct DatabaseConnectionTests {
    func openNew(_ directory: TemporaryDirectory, key: SecureBuffer? = nil, pageSize: Int = 4096) throws -> (
        DatabaseConnection, SecureBuffer
    ) {
        let key = try key ?? SecureBuffer.random(count: 32)
        let connection = try DatabaseConnection.open(
            path: directory.file("test.db"), key: key, cipher: try newCipher(pageSize: pageSize), create: true)
        return (connection, key)
    }

    /// Formats the linked SQLCipher reads (3 on 3.x; 3 and 4 on 4.x), each with its default
    /// page size and others.
    static let formatsAndPageSizes = [(4, 4096), (4, 1024), (4, 8192), (3, 1024), (3, 4096), (3, 2048)].filter {
        (try? SQLCipherEngine.linked().supports(format: $0.0)) == true
    }

    /// The SQLite each measured SQLCipher is built on (DESIGN.md).
    static let measuredSQLite = ["3.4.1": "3.15.2", "4.6.1 community": "3.46.1"]

    @Test("the linked library is the SQLCipher the build chose, on the SQLite the design measured")
    func linkedVersions() async throws {
        let directory = try TemporaryDirectory()
        let (connection, _) = try openNew(directory)
        let engine = try SQLCipherEngine.linked()
        #expect(try connection.cipherVersion() == engine.version)
        #expect(engine.sqliteVersion == String(cString: sqlite3_libversion()))
        #expect(engine.majorVersion == Int(engine.version.prefix(1)))
        #expect(engine.newDatabaseFormat == (engine.majorVersion >= 4 ? 4 : 3))
        if let expected = expectedSQLCipherVersion {
            #expect(engine.version.hasPrefix(expected), "Scripts/test built against \(expected)")
            #expect(Self.measuredSQLite[engine.version] == engine.sqliteVersion)
        }
    }

    @Test("libsqlite3 is never loaded into the process")
    func noPlainSQLite() async throws {
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/maps"))
        let maps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        #expect(maps.contains("libsqlcipher"))
        #expect(!maps.contains("libsqlite3"))
    }

    @Test("the raw key text is exactly x' + 64 lowercase hex digits + '")
    func rawKeyText() async throws {
        let key = secureBuffer(hex: "00ff10a9" + String(repeating: "5b", count: 28))
        let text = try RawKeyText.make(for: key)
        #expect(text.count == 67)
        #expect(
            text.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } == "x'00ff10a9"
                + String(repeating: "5b", count: 28) + "'")
        for wrongSize in [31, 33, 0] {
            await expectError(.invalidConfiguration, containing: ["32 bytes"]) {
                _ = try RawKeyText.make(for: SecureBuffer.random(count: wrongSize))
            }
        }
    }

    @Test(
        "SQL kept prepared for reuse follows schema changes, its own and another connection's, and runs inside its own rows"
    )
    func statementCache() throws {
        let directory = try TemporaryDirectory()
        let (db, key) = try openNew(directory)
        try db.execute("CREATE TABLE t(a INTEGER); INSERT INTO t VALUES (1), (2)")
        let select = "SELECT * FROM t ORDER BY 1"
        #expect(try db.fetchAll(select) == [1, 2].map { ResultRow(columnNames: ["a"], values: [.integer($0)]) })
        try db.execute("ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'x'")
        #expect(
            try db.fetchAll(select).first == ResultRow(columnNames: ["a", "b"], values: [.integer(1), .text("x")]))
        var headers: [[String]] = []
        try db.forEachResult(select) { columns, _ in headers.append(columns) }
        // Another connection replaces the table: the kept statement is re-prepared as it runs.
        let other = try DatabaseConnection.open(
            path: directory.file("test.db"), key: key, cipher: try newCipher(), create: false)
        try other.execute("DROP TABLE t; CREATE TABLE t(x, y, z); INSERT INTO t VALUES (7, 8, 9)")
        other.close()
        #expect(
            try db.fetchAll(select)
                == [ResultRow(columnNames: ["x", "y", "z"], values: [.integer(7), .integer(8), .integer(9)])])
        try db.forEachResult(select) { columns, _ in headers.append(columns) }
        #expect(headers == [["a", "b"], ["x", "y", "z"]])
        // The same SQL run while its rows are read gets a statement of its own.
        var inner: [Int] = []
        try db.execute(select) { _ in inner.append(try db.fetchAll(select).count) }
        #expect(inner == [1])
        #expect(try db.fetchAll(select).count == 1)
        db.close()
        #expect(throws: DBKeyError.self) { try db.fetchAll(select) }
    }

    @Test(
        "fetch decodes each row straight from SQLite as fetchAll reads it, keeps NULLs apart, and refuses SQL of two statements before running either"
    )
    func fetchDecodesRows() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        defer { db.close() }
        try db.execute("CREATE TABLE t(i INTEGER, r REAL, s TEXT, b BLOB)")
        let insert = try db.prepare("INSERT INTO t VALUES (?, ?, ?, ?)")
        for n in 0..<50 {
            try insert.execute(arguments: [
                n % 7 == 0 ? .null : .integer(Int64(n) * 1_000_000_007), .real(Double(n) / 3), .text("ü\(n)\u{0}x"),
                n % 5 == 0 ? .null : .blob([UInt8(n), 0, 255]),
            ])
        }
        let query = "SELECT i, r, s, b FROM t WHERE i IS NULL OR i > ? ORDER BY rowid"
        let decoded = try db.fetch(query, arguments: [.integer(3_000_000_000)]) { row in
            [
                row.isNull(0) ? SQLValue.null : .integer(row.integer(0)), .real(row.real(1)),
                row.text(2).map { .text($0) } ?? .null, row.blob(3).map { .blob($0) } ?? .null,
            ]
        }
        #expect(decoded == (try db.fetchAll(query, arguments: [.integer(3_000_000_000)]).map(\.values)))
        // All but rows 1 and 2 (1000000007 and 2000000014); the NULLs pass the IS NULL.
        #expect(decoded.count == 48)
        // Twice: the second call runs the statement kept prepared. A trailing comment is no statement.
        #expect(try db.fetch("SELECT count(*) FROM t") { $0.integer(0) } == [50])
        #expect(try db.fetch("SELECT count(*) FROM t") { $0.integer(0) } == [50])
        #expect(try db.fetch("SELECT count(*) FROM t;  -- all") { $0.integer(0) } == [50])
        #expect(throws: DBKeyError.self) {
            try db.fetch("SELECT count(*) FROM t; DELETE FROM t") { $0.integer(0) }
        }
        #expect(try db.fetchAll("SELECT count(*) FROM t")[0][0] == .integer(50), "the DELETE never ran")
    }

    @Test("every storage class binds and reads back unchanged")
    func bindingRoundTrip() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute("CREATE TABLE v(i, r, t, b, n)")
        let values: [SQLValue] = [
            .integer(Int64.min), .real(-0.125), .text("žluťoučký 🐎\u{0}end"), .blob([0, 1, 255]), .null,
        ]
        try db.execute("INSERT INTO v VALUES (?, ?, ?, ?, ?)", arguments: values)
        try db.execute(
            "INSERT INTO v VALUES (?, ?, ?, ?, ?)", arguments: [9_007_199_254_740_993, 1e308, "", .blob([]), nil])
        let rows = try db.fetchAll("SELECT i, r, t, b, n, typeof(b) FROM v ORDER BY rowid")
        #expect(rows.count == 2)
        #expect(Array(rows[0].values.prefix(5)) == values)
        #expect(rows[1][0] == .integer(9_007_199_254_740_993))
        #expect(rows[1][1] == .real(1e308))
        #expect(rows[1][2] == .text(""))
        #expect(rows[1][5] == .text("blob"), "an empty blob stays a blob, not NULL")
        #expect(rows[0]["t"] == .text("žluťoučký 🐎\u{0}end"))
    }

    @Test("arguments are consumed across the statements of a script, and a mismatch is an error")
    func argumentsAcrossStatements() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute(
            "CREATE TABLE t(a, b); INSERT INTO t VALUES (?, ?); INSERT INTO t VALUES (?, 0)", arguments: [1, 2, 3])
        #expect(try db.fetchAll("SELECT a, b FROM t ORDER BY a").map(\.values) == [[1, 2], [3, 0]])
        await expectError(.sqlite, containing: ["Not enough arguments"]) {
            try db.execute("INSERT INTO t VALUES (?, ?)", arguments: [1])
        }
        await expectError(.sqlite, containing: ["Too many arguments"]) {
            try db.execute("INSERT INTO t VALUES (?, ?)", arguments: [1, 2, 3])
        }
    }

    @Test("a prepared statement runs again with new arguments")
    func preparedStatement() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute("CREATE TABLE t(a INTEGER)")
        let insert = try db.prepare("INSERT INTO t VALUES (?)")
        #expect(insert.parameterCount == 1)
        try db.inTransaction {
            for value in 0..<100 {
                try insert.execute(arguments: [.integer(Int64(value))])
            }
        }
        let select = try db.prepare("SELECT count(*), sum(a) FROM t WHERE a >= ?")
        #expect(try select.fetchAll(arguments: [50]).first?.values == [50, 3725])
        #expect(try select.fetchAll(arguments: [0]).first?.values == [100, 4950])
    }

    @Test("a transaction commits on return and rolls back on a thrown error")
    func transactions() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute("CREATE TABLE t(a UNIQUE)")
        try db.inTransaction(.immediate) { try db.execute("INSERT INTO t VALUES (1)") }
        await expectError(.sqlite) {
            try db.inTransaction {
                try db.execute("INSERT INTO t VALUES (2)")
                try db.execute("INSERT INTO t VALUES (1)")  // violates UNIQUE
            }
        }
        #expect(db.isAutocommit)
        #expect(try db.fetchAll("SELECT a FROM t").map(\.values) == [[1]])
    }

    @Test("SQLite errors are mapped with their result codes, and argument values stay out of messages")
    func errorMapping() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute("CREATE TABLE t(a NOT NULL UNIQUE)")
        let syntax = await expectError(.sqlite, containing: ["syntax error"]) { try db.execute("SELEC 1") }
        #expect(syntax?.resultCode == .SQLITE_ERROR)
        try db.execute("INSERT INTO t VALUES (?)", arguments: ["secret-value-1"])
        let constraint = await expectError(.sqlite) {
            try db.execute("INSERT INTO t VALUES (?)", arguments: ["secret-value-1"])
        }
        #expect(constraint?.resultCode.map { SQLiteResultCode.SQLITE_CONSTRAINT ~= $0 } == true)
        #expect(constraint?.message.contains("secret-value-1") == false)
    }

    @Test("a new database is encrypted from its first byte: no SQLite header, and a wrong key fails the first read")
    func encryptedOnDisk() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute("CREATE TABLE t(a); INSERT INTO t VALUES ('visible text')")
        db.close()
        let bytes = try contents(directory.file("test.db"))
        #expect(bytes.prefix(16) != Data("SQLite format 3\0".utf8))
        #expect(bytes.range(of: Data("visible text".utf8)) == nil)
        await expectError(.wrongKey) {
            _ = try DatabaseConnection.open(
                path: directory.file("test.db"), key: SecureBuffer.random(count: 32),
                cipher: try newCipher(pageSize: 4096), create: false)
        }
    }

    @Test("the page size must be applied on every open: the right key with the default page size fails")
    func pageSizeRecorded() async throws {
        let directory = try TemporaryDirectory()
        let (db, key) = try openNew(directory, pageSize: 4096)
        try db.execute("CREATE TABLE t(a)")
        db.close()
        #expect(try contents(directory.file("test.db")).count % 4096 == 0)
        await expectError(.wrongKey) {
            _ = try DatabaseConnection.open(
                path: directory.file("test.db"), key: key, cipher: try newCipher(pageSize: 1024), create: false)
        }
        let reopened = try DatabaseConnection.open(
            path: directory.file("test.db"), key: key, cipher: try newCipher(pageSize: 4096), create: false)
        #expect(try reopened.fetchAll("SELECT count(*) FROM t").first?[0] == .integer(0))
    }

    @Test(
        "each format and page size opens with the recorded page size, whether it is set or left to the format's cipher_compatibility",
        arguments: DatabaseConnectionTests.formatsAndPageSizes
    )
    func pageSizePerFormat(format: Int, pageSize: Int) async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("test.db")
        let key = try SecureBuffer.random(count: 32)
        let cipher = CipherSettings.new(format: format, pageSize: pageSize)
        let created = try DatabaseConnection.open(path: path, key: key, cipher: cipher, create: true)
        try created.execute("CREATE TABLE t(a); INSERT INTO t VALUES (1)")
        created.close()
        // Opened twice: the second time, every setting's answer is already known to the process.
        for _ in 0..<2 {
            let reopened = try DatabaseConnection.open(path: path, key: key, cipher: cipher, create: false)
            // SQLCipher answers cipher pragmas as text.
            #expect(try reopened.fetchAll("PRAGMA cipher_page_size").first?[0] == .text(String(pageSize)))
            #expect(try reopened.fetchAll("SELECT a FROM t").first?[0] == .integer(1))
            reopened.close()
        }
        #expect(try contents(path).count % pageSize == 0)
        for other in [1024, 4096] where other != pageSize {
            await expectError(.wrongKey) {
                _ = try DatabaseConnection.open(
                    path: path, key: key, cipher: CipherSettings.new(format: format, pageSize: other), create: false)
            }
        }
    }

    @Test("a cipher setting's answer is checked until it passes once, then taken as known for the process")
    func cipherAnswersOnce() async throws {
        let assignment = "test_pragma = \(UUID().uuidString)"
        var checks = 0
        struct Refused: Error {}
        #expect(throws: Refused.self) {
            try CipherPragmaAnswers.requireOnce(assignment) {
                checks += 1
                throw Refused()
            }
        }
        try CipherPragmaAnswers.requireOnce(assignment) { checks += 1 }
        try CipherPragmaAnswers.requireOnce(assignment) { checks += 1 }
        #expect(checks == 2, "a refused answer is asked again; one that passed is not")
    }

    @Test("integrity_check reports nothing on a sound database")
    func integrity() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        try db.execute("CREATE TABLE t(a); INSERT INTO t VALUES (1)")
        #expect(try db.integrityCheck() == [])
    }

    @Test("a closed connection refuses statements")
    func closed() async throws {
        let directory = try TemporaryDirectory()
        let (db, _) = try openNew(directory)
        db.close()
        #expect(db.isClosed)
        await expectError(.sqlite, containing: ["closed"]) { try db.execute("SELECT 1") }
    }
}
