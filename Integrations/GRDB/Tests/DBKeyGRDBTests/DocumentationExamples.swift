import DBKeyGRDB
import Foundation
import GRDB
import Logging
import SQLCipherKeyManager
import Testing

// The Swift examples of the GRDB article (Sources/SQLCipherKeyManager/Documentation.docc/
// UsingDBKeyWithGRDB.md) and of the README's GRDB quick start, as compiled code: the root
// package's documentation test finds each example's lines here.

enum GRDBArticleExamples {
    static func quickStart(path: String, logger: Logger) async throws {
        let manager = DatabaseKeyManager(
            databasePath: path, kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
        let pool = try await KeyedDatabasePool(manager: manager, answeringRotationRequests: .seconds(2))
        var migrator = DatabaseMigrator()
        migrator.registerMigration("notes") { db in
            try db.create(table: "note") { $0.column("body", .text) }
        }
        try await pool.migrate(migrator)
        try await pool.write { db in try db.execute(sql: "INSERT INTO note VALUES (?)", arguments: ["hello"]) }
        let notes = try await pool.read { db in try String.fetchAll(db, sql: "SELECT body FROM note") }
        print(notes)
        try await manager.rotateKey()  // reads go on, writes wait; the pool is replaced
        try await pool.close()  // reports a key changed behind DBKey's journal
    }

    static func observation(pool: KeyedDatabasePool) {
        let observation = pool.observe(
            ValueObservation.tracking { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM note") ?? 0 },
            onError: { error in print("observation failed: \(error)") },
            onChange: { count in print("\(count) notes") })
        // … it goes on across key changes, restarted on each new pool …
        observation.cancel()
    }

    static func configuration(manager: DatabaseKeyManager) async throws -> KeyedDatabasePool {
        var configuration = Configuration()
        configuration.maximumReaderCount = 4
        return try await KeyedDatabasePool(
            manager: manager, configuration: configuration,
            prepareDatabase: { db in try db.execute(sql: "PRAGMA foreign_keys = ON") })
    }

    static func adopt(manager: DatabaseKeyManager, passphrase: SecureBuffer) async throws {
        // Once, at launch: a database GRDB keyed with usePassphrase, and no .key beside it yet.
        if !FileManager.default.fileExists(atPath: manager.keyFilePath) {
            try await manager.migrate(from: .passphrase(passphrase, PassphraseCipherSettings()))
        }
        let pool = try await KeyedDatabasePool(manager: manager)
        try await pool.close()
    }
}

@Test("the article's quick start runs")
func quickStartRuns() async throws {
    let workspace = try Workspace()
    setenv(LocalKms.masterKeyFileVariable, workspace.masterKeyFile, 1)
    try await GRDBArticleExamples.quickStart(path: workspace.database, logger: silentLogger)
    #expect(try workspace.manager().load().version == 2)
}
