import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

@Suite("Rewrap", .tags(.core))
struct RewrapTests {
    let otherMasterKey = Data(repeating: 0x42, count: 32).base64EncodedString()

    @Test(
        "rewrap to another local master key: same DEK and version, database untouched, only the new master key opens it"
    )
    func toAnotherMasterKey() async throws {
        let database = try await TestDatabase()
        let before = try database.manager().load()
        let databaseBytes = try contents(database.path)
        let modified = try FileManager.default.attributesOfItem(atPath: database.path)[.modificationDate] as? Date
        let target = try localKms(masterKeyBase64: otherMasterKey)

        let rewrapped = try await database.manager().rewrap(to: target, kekId: "default")
        #expect(rewrapped.kekId == target.kekId && rewrapped.kekId != before.kekId)
        #expect(rewrapped.version == before.version)
        #expect(rewrapped.keyCheck == before.keyCheck)
        #expect(rewrapped.encryptedDek != before.encryptedDek)
        #expect(try contents(database.path) == databaseBytes)
        #expect(try FileManager.default.attributesOfItem(atPath: database.path)[.modificationDate] as? Date == modified)

        await expectError(.kmsKeyNotFound) { _ = try await database.manager().open() }
        try await database.expectIntact(database.manager(kms: target))
    }

    @Test("rewrap from the local provider to another provider records the provider")
    func toAnotherProvider() async throws {
        let database = try await TestDatabase()
        let mock = MockKms(seed: 12)
        let rewrapped = try await database.manager().rewrap(to: mock, kekId: "hsm-like")
        #expect(rewrapped.kms == "mock" && rewrapped.kekId == "mock:hsm-like")
        try await database.expectIntact(database.manager(kms: mock))
    }

    @Test("rewrap leaves open connections alone")
    func withOpenConnection() async throws {
        let database = try await TestDatabase()
        let connection = try await database.manager().open()
        try await database.manager().rewrap(to: try localKms(masterKeyBase64: otherMasterKey), kekId: "default")
        #expect(try connection.fetchAll("SELECT count(*) FROM item").first?[0] == .integer(Int64(database.rows)))
    }

    @Test("a failure of the target KMS or of the .key write leaves the .key as it was", arguments: [0, 1, 2])
    func failures(kind: Int) async throws {
        let database = try await TestDatabase()
        let keyBytes = try contents(database.path + ".key")
        let target = MockKms(seed: 13)
        switch kind {
        case 0:
            target.failNext(1, [.encrypt])
            await expectError(.kmsUnavailable) { try await database.manager().rewrap(to: target, kekId: "k") }
        case 1:
            target.failNext(1, [.health], with: DBKeyError(.kmsKeyDisabled, "disabled"))
            await expectError(.kmsKeyDisabled) { try await database.manager().rewrap(to: target, kekId: "k") }
        default:
            await expectError(.io) {
                try await database.manager(faultAt: .writingFinalKeyFile).rewrap(to: target, kekId: "k")
            }
        }
        #expect(try contents(database.path + ".key") == keyBytes)
        try await database.expectIntact()
    }
}
