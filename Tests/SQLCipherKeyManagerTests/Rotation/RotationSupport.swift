import Foundation
import Logging
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// A failure injected at one step of a key change.
struct InjectedFault: Sendable {
    let step: KeyChangeStep

    static let error = DBKeyError(.io, "Injected failure (test).")

    var injector: @Sendable (KeyChangeStep) throws -> Void {
        { [step] reached in
            if reached == step { throw InjectedFault.error }
        }
    }
}

/// A managed database with known contents, for key-change tests.
struct TestDatabase {
    let directory: TemporaryDirectory
    let kms: any KeyManagementService
    let path: String
    let rows: Int
    let kekId: String
    let context: EncryptionContext

    /// Creates and fills a database: `rows` rows of 1000 characters, in WAL mode when asked.
    init(
        rows: Int = 300,
        wal: Bool = false,
        kms: (any KeyManagementService)? = nil,
        kekId: String = LocalKms.defaultKekName,
        context: EncryptionContext = .empty,
        name: String = "app.db"
    ) async throws {
        directory = try TemporaryDirectory()
        self.kms = try kms ?? localKms()
        path = directory.file(name)
        self.rows = rows
        self.kekId = kekId
        self.context = context
        let manager = self.manager()
        try await manager.initialize()
        let db = UncheckedConnection(try await manager.open())
        // Filling a large database is long synchronous work: off the cooperative pool, so that
        // tests running beside it keep their timing.
        try await offPool {
            let db = db.connection
            defer { db.close() }
            if wal {
                #expect(try db.fetchAll("PRAGMA journal_mode = WAL").first?[0] == .text("wal"))
            }
            try db.execute("CREATE TABLE item(id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            let insert = try db.prepare("INSERT INTO item(id, body) VALUES (?, printf('%01000d', ?))")
            try db.inTransaction {
                for row in 1...rows {
                    try insert.execute(arguments: [.integer(Int64(row)), .integer(Int64(row))])
                }
            }
        }
    }

    func manager(
        faultAt step: KeyChangeStep? = nil,
        kms: (any KeyManagementService)? = nil,
        logger: Logger = silentLogger
    ) -> DatabaseKeyManager {
        DatabaseKeyManager(
            databasePath: path,
            providers: KmsRegistry(kms ?? self.kms),
            configuration: .init(kekId: kekId, encryptionContext: context, openWait: .seconds(10)),
            logger: logger,
            faultInjector: step.map { InjectedFault(step: $0).injector }
        )
    }

    /// Opens through the manager and checks every committed row and the integrity check.
    func expectIntact(_ manager: DatabaseKeyManager? = nil, sourceLocation: SourceLocation = #_sourceLocation)
        async throws
    {
        let db = UncheckedConnection(try await (manager ?? self.manager()).open())
        let rows = self.rows
        let (problems, summary) = try await offPool {
            defer { db.connection.close() }
            return (
                try db.connection.integrityCheck(),
                try db.connection.fetchAll("SELECT count(*), sum(id), sum(length(body)) FROM item").first?.values
            )
        }
        #expect(problems == [], sourceLocation: sourceLocation)
        #expect(
            summary == [.integer(Int64(rows)), .integer(Int64(rows * (rows + 1) / 2)), .integer(Int64(rows * 1000))],
            sourceLocation: sourceLocation)
        // The .key matches: no pending record left after a successful open.
        #expect(try KeyFile.read(from: path + ".key").pending == nil, sourceLocation: sourceLocation)
    }

    /// Leaves the database and its journal as a crash in the middle of a write transaction
    /// under `key` leaves them: uncommitted pages spilled into the file, the originals in a hot
    /// journal.
    func leaveHotJournal(key: SecureBuffer) throws {
        let connection = try DatabaseConnection.open(
            path: path, key: key, cipher: try KeyFile.read(from: path + ".key").cipher, create: false)
        try connection.execute("PRAGMA cache_size = 10")  // spill pages to the file mid-transaction
        try connection.execute("BEGIN IMMEDIATE")
        // A real change: SQLite 3.46 (SQLCipher 4.6) writes nothing for `SET body = body`.
        try connection.execute("UPDATE item SET body = body || 'x'")
        let spilledDatabase = try contents(path)
        let hotJournal = try contents(path + "-journal")
        try connection.execute("ROLLBACK")
        connection.close()
        #expect(hotJournal.count > 0)
        try spilledDatabase.write(to: URL(fileURLWithPath: path))
        try hotJournal.write(to: URL(fileURLWithPath: path + "-journal"))
    }

    /// The current data key, unwrapped (tests only).
    func currentKey() async throws -> SecureBuffer {
        let keyFile = try KeyFile.read(from: path + ".key")
        return try await kms.decrypt(keyFile.encryptedDek, kekId: keyFile.kekId, context: keyFile.encryptionContext)
    }
}

/// Whether the `sqlcipher` shell of the linked engine reads the database with this raw key and
/// its own defaults, but the page size (SQLCipher 4.x answers `PRAGMA key` with "ok": the count
/// must be the last line).
func sqlcipherShellOpens(_ path: String, key: SecureBuffer, pageSize: Int = 4096) async throws -> Bool {
    let sqlcipher = try requireTool("sqlcipher", installedBy: "Scripts/setup")
    let script =
        "PRAGMA key = \"x'\(hex(key))'\";\nPRAGMA cipher_page_size = \(pageSize);\nSELECT count(*) FROM sqlite_master;\n"
    let result = try await run(sqlcipher, [path], input: script)
    let last = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
    return result.status == 0 && !result.stderr.contains("not a database") && Int(last) != nil
}

/// Hands a connection to one other thread at a time (tests only): the connection is used by
/// exactly one thread while the handing task waits.
final class UncheckedConnection: @unchecked Sendable {
    let connection: DatabaseConnection
    init(_ connection: DatabaseConnection) { self.connection = connection }
}
