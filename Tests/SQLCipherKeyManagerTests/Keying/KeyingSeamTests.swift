import CSQLCipher
import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// The keying seam: an SQLite handle the test opens through the C API, keyed only by
/// ``KeyLease/apply(to:)``.
@Suite("Keying an app's own SQLite handle", .tags(.engine, .core))
struct KeyingSeamTests {
    func populatedManager(_ directory: TemporaryDirectory, name: String = "app.db", seed: UInt64 = 21) async throws
        -> DatabaseKeyManager
    {
        let manager = DatabaseKeyManager(
            databasePath: directory.file(name), kms: MockKms(seed: seed),
            configuration: .init(kekId: "k", openWait: .milliseconds(300)), logger: silentLogger)
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT)")
        try db.execute("INSERT INTO note(body) VALUES ('one'), ('two'), ('three')")
        return manager
    }

    /// Opens a raw handle, keys it through the seam, and returns the notes it reads.
    func readThroughSeam(_ path: String, key: KeyLease) throws -> [String] {
        var handle: OpaquePointer?
        guard sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK, let handle else {
            throw DBKeyError(.io, "cannot open")
        }
        defer { sqlite3_close_v2(handle) }
        try key.apply(to: handle)
        var statement: OpaquePointer?
        #expect(sqlite3_prepare_v2(handle, "SELECT body FROM note ORDER BY id", -1, &statement, nil) == SQLITE_OK)
        defer { sqlite3_finalize(statement) }
        var bodies: [String] = []
        while sqlite3_step(statement) == SQLITE_ROW {
            bodies.append(String(cString: sqlite3_column_text(statement, 0)))
        }
        return bodies
    }

    @Test(
        "a 3-format database with an older .key is read through the seam on either engine: the format goes with the key"
    )
    func format3ThroughSeam() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("old.db")
        try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName, rows: 7)
        let manager = DatabaseKeyManager(databasePath: path, kms: try localKms(), logger: silentLogger)
        let key = try await manager.leaseKey()
        defer { key.release() }
        #expect(key.cipherSettings.format == 3)
        var handle: OpaquePointer?
        #expect(sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK)
        defer { sqlite3_close_v2(handle) }
        try key.apply(to: try #require(handle))
        var statement: OpaquePointer?
        #expect(sqlite3_prepare_v2(handle, "SELECT count(*) FROM t", -1, &statement, nil) == SQLITE_OK)
        defer { sqlite3_finalize(statement) }
        #expect(sqlite3_step(statement) == SQLITE_ROW && sqlite3_column_int64(statement, 0) == 7)
    }

    @Test("a raw sqlite3* keyed only through the seam reads the rows the manager wrote; the seam never closes it")
    func rawHandleReads() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populatedManager(directory)
        let key = try await manager.leaseKey()
        defer { key.release() }
        #expect(try readThroughSeam(manager.databasePath, key: key) == ["one", "two", "three"])
        #expect(!key.description.contains(hex(key.key)))
    }

    @Test("a held key keeps rotation out (database-in-use); once released the rotation runs and the old key is refused")
    func rotationWaitsForTheKey() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populatedManager(directory)
        let key = try await manager.leaseKey()
        await expectError(.databaseInUse) { try await manager.rotateKey(wait: .milliseconds(300)) }
        #expect(try manager.load().version == 1, "nothing changed")
        key.release()
        #expect(key.isReleased)
        try await manager.rotateKey()
        await expectError(.invalidConfiguration, containing: ["released"]) {
            _ = try readThroughSeam(manager.databasePath, key: key)
        }
        let fresh = try await manager.leaseKey()
        defer { fresh.release() }
        #expect(fresh.version == 2)
        #expect(try readThroughSeam(manager.databasePath, key: fresh) == ["one", "two", "three"])
    }

    @Test("a key applied to another database's handle is wrong-key, not silently a new database")
    func otherDatabase() async throws {
        let directory = try TemporaryDirectory()
        let first = try await populatedManager(directory, name: "a.db")
        let second = try await populatedManager(directory, name: "b.db", seed: 23)
        let key = try await first.leaseKey()
        defer { key.release() }
        await expectError(.wrongKey) { _ = try readThroughSeam(second.databasePath, key: key) }
    }

    @Test("an emptied database file is refused by the seam as damaged, and stays empty")
    func emptiedDatabase() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populatedManager(directory)
        let key = try await manager.leaseKey()
        defer { key.release() }
        try Data().write(to: URL(fileURLWithPath: manager.databasePath))
        await expectError(.databaseDamaged, containing: ["empty"]) {
            _ = try readThroughSeam(manager.databasePath, key: key)
        }
        #expect(try contents(manager.databasePath).isEmpty)
    }

    @Test("a key changed through a seam handle (PRAGMA rekey) is reported as exactly that on release and on open")
    func keyChangedOutside() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populatedManager(directory)
        let key = try await manager.leaseKey()
        var handle: OpaquePointer?
        #expect(sqlite3_open_v2(manager.databasePath, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK)
        try key.apply(to: try #require(handle))
        // The app's own stack has no guard: it rekeys behind the journal.
        #expect(sqlite3_exec(handle, "PRAGMA rekey = 'hunter2'", nil, nil, nil) == SQLITE_OK)
        sqlite3_close_v2(handle)
        await expectError(.wrongKey, containing: ["changed outside DBKey", "rotateKey"]) { try key.checkAndRelease() }
        #expect(key.isReleased)
        await expectError(.wrongKey, containing: ["rekeyed after this .key was written", "outside DBKey's journal"]) {
            _ = try await manager.open()
        }
    }

    @Test("checkAndRelease of an untouched database releases quietly, and a rotation can run")
    func checkAndReleaseQuietly() async throws {
        let directory = try TemporaryDirectory()
        let manager = try await populatedManager(directory)
        let key = try await manager.leaseKey()
        #expect(try readThroughSeam(manager.databasePath, key: key) == ["one", "two", "three"])
        try key.checkAndRelease()
        #expect(try await manager.rotateKey().version == 2)
    }

    @Test("a handle whose cipher_version is empty (plain SQLite) is refused before it is keyed")
    func plainSQLiteRefused() async throws {
        // One SQLite per process: a plain-SQLite handle cannot exist beside libsqlcipher here, so
        // the decision the seam makes on the pragma's answer is tested directly.
        for answer in [nil, ""] as [String?] {
            await expectError(.unsupportedFormat, containing: ["not SQLCipher", "plaintext"]) {
                try KeyLease.requireSQLCipher(cipherVersion: answer)
            }
        }
        try KeyLease.requireSQLCipher(cipherVersion: "3.4.1")
    }

    @Test("leaseKey settles an interrupted rotation before handing out the key")
    func settlesPending() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 22)
        let failing = DatabaseKeyManager(
            databasePath: directory.file("p.db"), providers: KmsRegistry(kms), configuration: .init(kekId: "k"),
            logger: silentLogger, faultInjector: { if $0 == .writingFinalKeyFile { throw DBKeyError(.io, "injected") } }
        )
        try await DatabaseKeyManager(
            databasePath: directory.file("p.db"), kms: kms, configuration: .init(kekId: "k"), logger: silentLogger
        ).initialize()
        await expectError(.io) { try await failing.rotateKey() }
        #expect(try failing.load().pending != nil)
        let manager = DatabaseKeyManager(
            databasePath: directory.file("p.db"), kms: kms, configuration: .init(kekId: "k"), logger: silentLogger)
        let key = try await manager.leaseKey()
        defer { key.release() }
        #expect(key.version == 2)
        #expect(try manager.load().pending == nil)
    }
}
