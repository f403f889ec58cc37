import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

@Suite("Key rotation", .tags(.engine, .core))
struct RotationTests {
    @Test(
        "after rotation: a new key opens, the old one no longer does (sqlcipher shell), version +1, rotated_at set, not due",
        arguments: [false, true])
    func rotation(wal: Bool) async throws {
        let database = try await TestDatabase(wal: wal)
        let manager = database.manager()
        let before = try manager.load()
        let oldKey = try await database.currentKey()
        #expect(try await sqlcipherShellOpens(database.path, key: oldKey))

        let rotated = try await manager.rotateKey()
        #expect(rotated.version == before.version + 1)
        #expect(rotated.rotatedAt != nil)
        #expect(rotated.keyCheck != before.keyCheck)
        #expect(rotated.encryptedDek != before.encryptedDek)
        #expect(rotated.cipher.salt == before.cipher.salt, "rekey keeps the salt")
        #expect(try manager.load() == rotated)
        #expect(try !manager.needsRotation(now: Date()))

        let newKey = try await database.currentKey()
        #expect(newKey != oldKey)
        #expect(!(try await sqlcipherShellOpens(database.path, key: oldKey)))
        #expect(try await sqlcipherShellOpens(database.path, key: newKey))
        try await database.expectIntact()
        let mode = try await manager.open().fetchAll("PRAGMA journal_mode").first?[0]
        #expect(mode == .text(wal ? "wal" : "delete"), "the journal mode is kept")
    }

    @Test("a rotation period makes the key due, and rotating clears it")
    func dueAfterPeriod() async throws {
        let directory = try TemporaryDirectory()
        let manager = DatabaseKeyManager(
            databasePath: directory.file("due.db"), kms: try localKms(), configuration: .init(rotationPeriodDays: 1),
            logger: silentLogger)
        var keyFile = try await manager.initialize()
        keyFile.createdAt = keyFile.createdAt.addingTimeInterval(-2 * 86_400)
        // Backdated as if two days had passed, sealed as the manager would have.
        try await manager.database.keyStore.write(keyFile, sealedWith: try await manager.dataKey())
        #expect(try manager.needsRotation())
        try await manager.rotateKey()
        #expect(try !manager.needsRotation())
    }

    @Test(
        "a KMS failure for the new key or the current key changes nothing",
        arguments: [MockKms.Operation.generateDataKey, .decrypt])
    func kmsFailure(operation: MockKms.Operation) async throws {
        let kms = MockKms(seed: 3)
        let database = try await TestDatabase(kms: kms)
        let keyFile = try database.manager().load()
        let bytes = try contents(database.path)
        kms.failNext(1, [operation])
        await expectError(.kmsUnavailable) { try await database.manager().rotateKey() }
        #expect(try database.manager().load() == keyFile)
        #expect(try contents(database.path) == bytes)
        try await database.expectIntact()
    }

    @Test(
        "a crash at any step, by copy or in place, leaves a database that opens with every row and a matching .key",
        arguments: KeyChangeStep.rotationSteps, [false, true])
    func faultAtStep(step: KeyChangeStep, inPlace: Bool) async throws {
        let database = try await TestDatabase()
        let before = try database.manager().load()
        let result = await Result { try await database.manager(faultAt: step).rotateKey(inPlace: inPlace) }
        let expectedVersion: Int
        switch step {
        case .swappingDatabase where inPlace, .copyingPages where inPlace:
            // A rotation in place passes no copy and no swap: it runs to the end.
            #expect(try result.get().version == before.version + 1)
            expectedVersion = before.version + 1
        case .writingPendingKeyFile, .changingDatabase, .copyingPages:
            // Failed before the database changed, with no pending record: the current key stays.
            #expect((result.error as? DBKeyError)?.code == .io)
            expectedVersion = before.version
        case .pendingKeyFileWritten:
            // The pending record is on the disk. In place, the database was not rekeyed: the
            // next open drops the record. By copy, the complete copy it names is renamed in.
            #expect((result.error as? DBKeyError)?.code == .io)
            expectedVersion = before.version + (inPlace ? 0 : 1)
        case .verifyingNewKey, .swappingDatabase:
            // A crash there: the rekey had committed, or the complete copy is journaled; the
            // next open settles it by completing the rotation. (A real error there is settled
            // by the command itself: the fault injection tests check what it reports.)
            #expect((result.error as? DBKeyError)?.code == .io)
            expectedVersion = before.version + 1
        default:
            // Rekeyed but the final .key write failed: it still records the pending key,
            // and the next open completes the rotation.
            #expect((result.error as? DBKeyError)?.code == .io)
            #expect(try database.manager().load().pending?.version == before.version + 1)
            expectedVersion = before.version + 1
        }
        try await database.expectIntact()
        let after = try database.manager().load()
        #expect(after.version == expectedVersion)
        if expectedVersion == before.version {
            #expect(after.keyCheck == before.keyCheck)
        }
        // And a rotation afterwards works.
        try await database.manager().rotateKey()
        try await database.expectIntact()
    }

    @Test(
        "a rotation with a connection open fails at once as in use; with --wait it proceeds once the connection closes")
    func databaseInUse() async throws {
        let database = try await TestDatabase()
        let manager = database.manager()
        let connection = try await manager.open()
        let clock = ContinuousClock()
        let started = clock.now
        await expectError(.databaseInUse, containing: ["in use"]) { try await manager.rotateKey() }
        // "At once": the lock is polled for DatabaseLock.minimumWait (200 ms), which a loaded
        // machine may stretch (5.3 s was seen with the whole suite and three servers on 2
        // cores); a hang would never return.
        #expect(clock.now - started < .seconds(20), "no hang")
        // Closed from a plain thread, independent of the cooperative pool the tests share.
        let closing = UncheckedConnection(connection)
        Thread {
            usleep(300_000)
            closing.connection.close()
        }.start()
        let rotated = try await manager.rotateKey(wait: .seconds(30))
        #expect(connection.isClosed)
        #expect(rotated.version == 2)
        try await database.expectIntact()
    }

    @Test("two rotations at once: exactly one runs, the other is told the database is in use")
    func concurrentRotations() async throws {
        let kms = MockKms(seed: 4)
        let database = try await TestDatabase(kms: kms)
        kms.setLatency(.milliseconds(300))
        async let first = Result { try await database.manager().rotateKey() }
        async let second = Result { try await database.manager().rotateKey() }
        let results = await [first, second]
        let successes = results.filter { (try? $0.get()) != nil }
        let failures = results.compactMap { result -> DBKeyError? in
            if case .failure(let error) = result { return error as? DBKeyError }
            return nil
        }
        #expect(successes.count == 1)
        #expect(failures.map(\.code) == [.databaseInUse])
        kms.setLatency(.zero)
        #expect(try database.manager().load().version == 2)
        try await database.expectIntact()
    }

    @Test("an open during a rotation waits for it and sees the new key")
    func openWaitsForRotation() async throws {
        let kms = MockKms(seed: 5)
        let database = try await TestDatabase(kms: kms)
        kms.setLatency(.milliseconds(200))
        let rotation = Task { try await database.manager().rotateKey() }
        try await Task.sleep(for: .milliseconds(100))
        // What is tested is that the open waits, not for how long: a CI machine busy with the
        // other tests has taken more than 10 s over this rotation.
        let patient = DatabaseKeyManager(
            databasePath: database.path, kms: kms, configuration: .init(kekId: database.kekId, openWait: .seconds(120)),
            logger: silentLogger)
        let (connection, keyFile) = try await patient.database.openReportingKeyFile()
        connection.close()
        #expect(keyFile.version == 2)
        #expect(try await rotation.value.version == 2)
    }
}

extension KeyChangeStep {
    /// The steps a rotation passes through.
    static let rotationSteps: [KeyChangeStep] = [
        .writingPendingKeyFile, .pendingKeyFileWritten, .changingDatabase, .copyingPages, .swappingDatabase,
        .verifyingNewKey, .writingFinalKeyFile,
    ]

    /// The steps a migration or an upgrade passes through: every one but the rotation's copy.
    static let migrationSteps = allCases.filter { $0 != .copyingPages }
}

extension Result where Failure == any Error {
    init(_ body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }

    var error: (any Error)? {
        if case .failure(let error) = self { return error }
        return nil
    }
}
