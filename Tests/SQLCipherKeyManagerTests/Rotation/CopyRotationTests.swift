import Crypto
import Foundation
import SQLCipherKeyManagerTesting
import SystemPackage
import Testing

@testable import SQLCipherKeyManager

/// The default rotation: pages re-encrypted into a copy that replaces the database, checked
/// page by page against the format, and its recovery table.
@Suite("Rotation by copy", .tags(.engine, .core))
struct CopyRotationTests {
    /// The databases the copy must handle: each page format, several page sizes, WAL, and the
    /// plaintext header.
    enum Shape: String, CaseIterable, CustomTestStringConvertible {
        case format3, pages1024, pages4096WAL, pages65536, plaintextHeader
        var testDescription: String { rawValue }
        /// The shapes the linked engine can make (a plaintext header needs SQLCipher 4).
        static var supported: [Shape] {
            allCases.filter { $0 != .plaintextHeader || SQLCipherFormatTests.onSQLCipher4 }
        }
    }

    /// Makes a database of `shape` with rows in two tables, user_version, application_id and a
    /// freelist; returns its manager.
    func makeDatabase(_ shape: Shape, in directory: TemporaryDirectory) async throws -> DatabaseKeyManager {
        let path = directory.file("app.db")
        var configuration = DatabaseKeyManager.Configuration()
        switch shape {
        case .format3:
            try await makeFormat3Database(path: path, kms: try localKms(), kekId: LocalKms.defaultKekName)
        case .pages1024: configuration.pageSize = 1024
        case .pages4096WAL: configuration.pageSize = 4096
        case .pages65536: configuration.pageSize = 65536
        case .plaintextHeader: configuration.plaintextHeader = true
        }
        let manager = DatabaseKeyManager(
            databasePath: path, kms: try localKms(), configuration: configuration, logger: silentLogger)
        if shape != .format3 { try await manager.initialize() }
        let db = UncheckedConnection(try await manager.open())
        try await offPool {
            let db = db.connection
            defer { db.close() }
            if shape == .pages4096WAL || shape == .plaintextHeader {
                #expect(try db.fetchAll("PRAGMA journal_mode = WAL").first?[0] == .text("wal"))
            }
            try db.execute(
                """
                CREATE TABLE IF NOT EXISTS t(x);
                CREATE TABLE item(id INTEGER PRIMARY KEY, body BLOB NOT NULL);
                CREATE INDEX item_body ON item(body);
                PRAGMA user_version = 7;
                PRAGMA application_id = 1145258561;
                """)
            try db.inTransaction {
                try db.execute(
                    "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 600) INSERT INTO item SELECT i, randomblob(700) FROM c"
                )
                try db.execute("INSERT INTO t SELECT id FROM item WHERE id % 3 = 0")
            }
            // Free pages: the copy must carry the freelist as it is.
            try db.execute("DELETE FROM item WHERE id % 4 = 0")
        }
        return manager
    }

    /// What must survive a rotation: rows (hashed per table), schema and header fields.
    func snapshot(_ manager: DatabaseKeyManager) async throws -> [String] {
        let db = UncheckedConnection(try await manager.open())
        return try await offPool {
            let db = db.connection
            defer { db.close() }
            var facts = try db.integrityCheck().map { "integrity: \($0)" }
            for pragma in ["user_version", "application_id", "journal_mode", "freelist_count", "page_count"] {
                facts.append("\(pragma) = \(try db.fetchAll("PRAGMA \(pragma)").first?[0] ?? .null)")
            }
            for table in ["t", "item"] {
                var hash = SHA256()
                for row in try db.fetchAll("SELECT * FROM \(table) ORDER BY rowid") {
                    hash.update(data: Array("\(row.values)".utf8))
                }
                facts.append("\(table): \(Data(hash.finalize()).base64EncodedString())")
            }
            return facts
        }
    }

    /// Every page's IV, and whether every page but the lock-byte one authenticates under `key`.
    func pages(_ path: String, key: SecureBuffer, cipher: CipherSettings) throws -> (ivs: [[UInt8]], authentic: Bool) {
        let bytes = Array(try contents(path))
        let salt = try #require(cipher.salt)
        let macKey = key.withUnsafeBytes { PageAuthentication.hmacKey(from: $0, salt: salt, cipher: cipher) }
        var ivs: [[UInt8]] = []
        var authentic = true
        for (index, start) in stride(from: 0, to: bytes.count, by: cipher.pageSize).enumerated() {
            let page = Array(bytes[start..<(start + cipher.pageSize)])
            let ivStart = cipher.pageSize - cipher.reservedBytesPerPage
            ivs.append(Array(page[ivStart..<(ivStart + 16)]))
            authentic =
                authentic && PageAuthentication.authenticates(page, number: index + 1, macKey: macKey, cipher: cipher)
        }
        return (ivs, authentic)
    }

    @Test(
        "every page re-encrypted into the copy: each authenticates under the new key, salt or header kept, no IV reused, rows, user_version, application_id, WAL and freelist kept",
        arguments: Shape.supported)
    func copyKeepsEverything(shape: Shape) async throws {
        let directory = try TemporaryDirectory()
        let manager = try await makeDatabase(shape, in: directory)
        let path = manager.databasePath
        let before = try await snapshot(manager)
        let keyFile = try manager.load()
        let oldKey = try await manager.dataKey()
        let oldBytes = try contents(path)
        let old = try pages(path, key: oldKey, cipher: keyFile.cipher)
        #expect(old.authentic)

        #expect(chmod(path, 0o640) == 0)
        let rotated = try await manager.rotateKey()
        #expect(rotated.version == keyFile.version + 1 && rotated.cipher == keyFile.cipher)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o640, "the database keeps its permissions")
        let newKey = try await manager.dataKey()
        let newBytes = try contents(path)
        #expect(newBytes.count == oldBytes.count)
        let firstBytes = max(keyFile.cipher.plaintextHeaderSize, 16)
        #expect(newBytes.prefix(firstBytes) == oldBytes.prefix(firstBytes), "the salt (or plaintext header) is kept")
        let new = try pages(path, key: newKey, cipher: rotated.cipher)
        #expect(new.authentic, "every page authenticates under the new key")
        #expect(try !pages(path, key: oldKey, cipher: rotated.cipher).authentic)
        let allIVs = old.ivs + new.ivs
        #expect(Set(allIVs).count == allIVs.count, "no IV repeats within the new file or across old and new")
        #expect(try await snapshot(manager) == before)
        #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-rotating"))
        if shape == .pages1024 || shape == .pages65536 {
            // The engine's own shell reads it with the new key and refuses the old one.
            #expect(try await sqlcipherShellOpens(path, key: newKey, pageSize: rotated.cipher.pageSize))
            #expect(!(try await sqlcipherShellOpens(path, key: oldKey, pageSize: rotated.cipher.pageSize)))
        }
    }

    @Test(
        "a page that fails its HMAC stops the rotation with its page number, and the database and .key stay byte-identical",
        arguments: [false, true])
    func damagedPage(wal: Bool) async throws {
        let database = try await TestDatabase(rows: 300, wal: wal)
        let path = database.path
        let pageSize = try database.manager().load().cipher.pageSize
        var bytes = try contents(path)
        let pageCount = bytes.count / pageSize
        let damaged = pageCount / 2
        // A byte in the middle of the page's ciphertext.
        bytes[(damaged - 1) * pageSize + pageSize / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: path))
        let keyBytes = try contents(path + ".key")
        await expectError(.databaseDamaged, containing: ["Page \(damaged) "]) {
            try await database.manager().rotateKey()
        }
        #expect(try contents(path) == bytes)
        #expect(try contents(path + ".key") == keyBytes)
        #expect(!FileManager.default.fileExists(atPath: path + ".dbkey-rotating"))
    }

    @Test("a hot journal is rolled back before the copy is made: the rotated database holds the committed rows only")
    func hotJournalBeforeCopy() async throws {
        let database = try await TestDatabase(rows: 2000)
        try database.leaveHotJournal(key: try await database.currentKey())
        try await database.manager().rotateKey()
        try await database.expectIntact()
    }

    @Test("rotate --in-place re-encrypts with PRAGMA rekey: the new key opens, the old one does not, every row kept")
    func inPlace() async throws {
        let database = try await TestDatabase()
        let oldKey = try await database.currentKey()
        let rotated = try await database.manager().rotateKey(inPlace: true)
        #expect(rotated.version == 2)
        let newKey = try await database.currentKey()
        #expect(try await sqlcipherShellOpens(database.path, key: newKey))
        #expect(!(try await sqlcipherShellOpens(database.path, key: oldKey)))
        try await database.expectIntact()
    }

    // MARK: - Recovery table

    /// A state a crash can leave, set up from a rotation stopped after its copy was journaled.
    enum CrashState: String, CaseIterable, CustomTestStringConvertible {
        /// No pending record; the copy complete (killed before the .key write).
        case noPendingCompleteCopy
        /// No pending record; the copy partial (killed while copying).
        case noPendingPartialCopy
        /// Pending; the copy complete; the old key opens the database (killed before the rename).
        case pendingCompleteCopyOldKey
        /// Pending; the copy partial; the old key opens the database (a copy damaged on disk).
        case pendingPartialCopyOldKey
        /// Pending; no copy; the old key opens the database (the copy lost).
        case pendingNoCopyOldKey
        /// Pending; no copy; the new key opens the database (killed after the rename).
        case pendingNoCopyNewKey
        /// Pending; a copy; the new key opens the database (a second copy of the renamed file).
        case pendingCopyNewKey
        /// Pending; neither key opens the database (replaced by another file).
        case pendingNeitherKey

        var testDescription: String { rawValue }
    }

    @Test(
        "recovery table: each state a crash can leave opens with every row, under the key the table names, with no copy left",
        arguments: CrashState.allCases)
    func recovery(state: CrashState) async throws {
        let database = try await TestDatabase(rows: 200)
        let path = database.path
        let copyPath = path + ".dbkey-rotating"
        let before = try database.manager().load()
        let oldKey = try await database.currentKey()
        // A rotation stopped with its copy made: before (no pending) or after (pending) the
        // .key write. The copy is left as a killed process leaves it.
        let pendingState = ![.noPendingCompleteCopy, .noPendingPartialCopy].contains(state)
        let stop: KeyChangeStep = pendingState ? .pendingKeyFileWritten : .writingPendingKeyFile
        await expectError(.io) { try await database.manager(faultAt: stop).rotateKey() }
        let journaled = try KeyFile.read(from: path + ".key")
        #expect((journaled.pending != nil) == pendingState)
        #expect(FileManager.default.fileExists(atPath: copyPath))
        if pendingState {
            #expect(journaled.pending?.operation == .rotateByCopy)
            #expect(journaled.pending?.copy?.name == "app.db.dbkey-rotating")
        }
        let copyBytes = try contents(copyPath)
        switch state {
        case .noPendingCompleteCopy, .pendingCompleteCopyOldKey:
            break
        case .noPendingPartialCopy, .pendingPartialCopyOldKey:
            try copyBytes.prefix(copyBytes.count / 2).write(to: URL(fileURLWithPath: copyPath))
        case .pendingNoCopyOldKey:
            try FileManager.default.removeItem(atPath: copyPath)
        case .pendingNoCopyNewKey:
            #expect(rename(copyPath, path) == 0)
        case .pendingCopyNewKey:
            #expect(rename(copyPath, path) == 0)
            try copyBytes.write(to: URL(fileURLWithPath: copyPath))
        case .pendingNeitherKey:
            try FileManager.default.removeItem(atPath: copyPath)
            try Data(repeating: 0x5A, count: copyBytes.count).write(to: URL(fileURLWithPath: path))
        }

        if state == .pendingNeitherKey {
            let keyBytes = try contents(path + ".key")
            let databaseBytes = try contents(path)
            await expectError(.rotationInterrupted, containing: ["Neither the current key"]) {
                _ = try await database.manager().open()
            }
            #expect(try contents(path + ".key") == keyBytes && contents(path) == databaseBytes, "files untouched")
            return
        }
        try await database.expectIntact()
        let settled = try KeyFile.read(from: path + ".key")
        let rolledForward = [.pendingCompleteCopyOldKey, .pendingNoCopyNewKey, .pendingCopyNewKey].contains(state)
        #expect(settled.version == before.version + (rolledForward ? 1 : 0))
        #expect(settled.keyCheck == (rolledForward ? journaled.pending?.keyCheck : before.keyCheck))
        let key = try await database.currentKey()
        #expect(try await sqlcipherShellOpens(path, key: key))
        #expect((key == oldKey) == !rolledForward)
        #expect(!FileManager.default.fileExists(atPath: copyPath), "no copy left behind")
        // And a rotation from there works.
        try await database.manager().rotateKey()
        try await database.expectIntact()
    }

    @Test(
        "a KMS outage while a journaled copy is rolled forward changes nothing: the copy is renamed in only once the pending key is unwrapped"
    )
    func kmsOutageBeforeRollForward() async throws {
        let kms = MockKms(seed: 11)
        let database = try await TestDatabase(rows: 50, kms: kms)
        let before = try database.manager().load()
        // A manager that already holds the current key, so that the outage hits the pending one.
        let manager = database.manager()
        try await manager.open().close()
        await expectError(.io) { try await database.manager(faultAt: .pendingKeyFileWritten).rotateKey() }
        let (keyBytes, databaseBytes) = (try contents(database.path + ".key"), try contents(database.path))
        let copy = try contents(database.path + ".dbkey-rotating")
        kms.resetCalls()
        kms.failNext(1, [.decrypt])
        await expectError(.kmsUnavailable) { _ = try await manager.open() }
        #expect(kms.calls(of: .decrypt).count == 1, "the one decrypt asked for was the pending key's")
        #expect(try contents(database.path + ".key") == keyBytes && contents(database.path) == databaseBytes)
        #expect(try contents(database.path + ".dbkey-rotating") == copy)
        try await database.expectIntact()
        #expect(try database.manager().load().version == before.version + 1, "rolled forward once the KMS answers")
    }

    @Test(
        "a database and .key renamed after a rotation was journaled roll it back: the old name's copy is never taken")
    func renamedAfterJournal() async throws {
        let database = try await TestDatabase(rows: 50)
        let before = try database.manager().load()
        await expectError(.io) { try await database.manager(faultAt: .pendingKeyFileWritten).rotateKey() }
        let renamed = database.directory.file("renamed.db")
        #expect(rename(database.path, renamed) == 0 && rename(database.path + ".key", renamed + ".key") == 0)
        let copy = try contents(database.path + ".dbkey-rotating")
        let manager = DatabaseKeyManager(
            databasePath: renamed, kms: database.kms, configuration: .init(), logger: silentLogger)
        try await manager.open().close()
        #expect(try manager.load().version == before.version && manager.load().pending == nil)
        #expect(try contents(database.path + ".dbkey-rotating") == copy, "another name's copy is left alone")
    }

    @Test("a pending copy record that names no copy, or names a path, is refused as a corrupt .key")
    func copyRecordValidated() async throws {
        let database = try await TestDatabase(rows: 10)
        await expectError(.io) { try await database.manager(faultAt: .pendingKeyFileWritten).rotateKey() }
        let key = try await database.currentKey()
        var keyFile = try KeyFile.read(from: database.path + ".key")
        keyFile.pending?.copy?.name = "../elsewhere.db"
        try keyFile.sealed(with: key).write(to: database.path + ".key")
        await expectError(.keyFileCorrupt, containing: ["pending.copy.name"]) {
            _ = try KeyFile.read(from: database.path + ".key")
        }
        keyFile.pending?.copy = nil
        try keyFile.sealed(with: key).write(to: database.path + ".key")
        await expectError(.keyFileCorrupt, containing: ["pending.copy"]) {
            _ = try KeyFile.read(from: database.path + ".key")
        }
    }
}
