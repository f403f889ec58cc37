import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// The `.key` file states a crash can leave, built by hand, and what the next open makes of them.
@Suite("Recovery of interrupted rotations", .tags(.engine, .core))
struct RecoveryTests {
    /// Writes a pending rotation to a new key into the `.key` file, as step 3 does.
    func journalRotation(_ database: TestDatabase) async throws -> (KeyFile, SecureBuffer) {
        let manager = database.manager()
        let keyFile = try manager.load()
        let newKey = try await database.kms.generateDataKey(kekId: keyFile.kekId, context: keyFile.encryptionContext)
        var journaled = keyFile
        journaled.pending = PendingOperation(
            operation: .rotate, encryptedDek: newKey.wrapped, kekId: newKey.kekId, kms: database.kms.providerName,
            version: keyFile.version + 1, keyCheck: KeyCheck(for: newKey.plaintext), startedAt: KeyFile.now())
        // Sealed with the current key, as rotateKey() seals its journal.
        let sealed = try await manager.database.keyStore.write(journaled, sealedWith: try await database.currentKey())
        return (sealed, newKey.plaintext)
    }

    @Test("pending, database not rekeyed: the open keeps the current key and drops pending")
    func notRekeyed() async throws {
        let database = try await TestDatabase()
        let before = try database.manager().load()
        _ = try await journalRotation(database)
        try await database.expectIntact()
        let after = try database.manager().load()
        #expect(after == before)
    }

    @Test("pending, database rekeyed: the open completes the rotation", arguments: [false, true])
    func rekeyed(wal: Bool) async throws {
        let database = try await TestDatabase(wal: wal)
        let oldKey = try await database.currentKey()
        let (journaled, newKey) = try await journalRotation(database)
        let connection = try DatabaseConnection.open(
            path: database.path, key: oldKey, cipher: try newCipher(pageSize: 4096), create: false)
        try connection.rekey(to: newKey)
        connection.close()
        try await database.expectIntact()
        let after = try database.manager().load()
        #expect(after.version == journaled.version + 1)
        #expect(after.keyCheck == journaled.pending?.keyCheck)
        #expect(after.rotatedAt != nil)
    }

    @Test("pending, and neither key opens: a typed error naming both key checks, files untouched")
    func neitherOpens() async throws {
        let database = try await TestDatabase()
        let (journaled, _) = try await journalRotation(database)
        // A third key, in neither the current nor the pending record.
        let connection = try DatabaseConnection.open(
            path: database.path, key: try await database.currentKey(), cipher: try newCipher(pageSize: 4096),
            create: false)
        try connection.rekey(to: try SecureBuffer.random(count: 32))
        connection.close()
        let bytes = (try contents(database.path), try contents(database.path + ".key"))
        await expectError(
            .rotationInterrupted, containing: [journaled.keyCheck!.base64, journaled.pending!.keyCheck.base64]
        ) {
            _ = try await database.manager().open()
        }
        #expect(try contents(database.path) == bytes.0)
        #expect(try contents(database.path + ".key") == bytes.1)
    }

    @Test("pending and a KMS outage: the open fails as retryable and changes nothing")
    func kmsOutageDuringRecovery() async throws {
        let kms = MockKms(seed: 8)
        let database = try await TestDatabase(kms: kms)
        _ = try await journalRotation(database)
        let keyBytes = try contents(database.path + ".key")
        kms.failNext(1, [.decrypt])
        await expectError(.kmsUnavailable) { _ = try await database.manager().open() }
        #expect(try contents(database.path + ".key") == keyBytes)
        try await database.expectIntact()
    }

    @Test("a hot journal left by a rekey killed mid-way is rolled back under the current key")
    func hotJournal() async throws {
        let database = try await TestDatabase(rows: 2000)
        let oldKey = try await database.currentKey()
        _ = try await journalRotation(database)
        try database.leaveHotJournal(key: oldKey)
        try await database.expectIntact()
        #expect(!FileManager.default.fileExists(atPath: database.path + "-journal"))
    }
}
