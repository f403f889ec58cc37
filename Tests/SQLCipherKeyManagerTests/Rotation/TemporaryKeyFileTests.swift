import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// `<db>.key.tmp.<number>` files that a SIGKILL left in the middle of a `.key` write are removed
/// under the exclusive lock — and nothing else is.
@Suite("Temporary .key files left by a kill", .tags(.core))
struct TemporaryKeyFileTests {
    @Test("rotate, migrate and the settling of a pending change remove ours; other names, links and others' stay")
    func cleanup() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 81)
        let path = directory.file("app.db")
        let manager = DatabaseKeyManager(
            databasePath: path, kms: kms, configuration: .init(kekId: "k"), logger: silentLogger)
        try await manager.initialize()
        let target = directory.file("precious")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: target))
        let ours = ["app.db.key.tmp.1", "app.db.key.tmp.18446744073709551615"]
        let others = [
            "app.db.key.tmp.", "app.db.key.tmp.12a", "app.db.key.tmp.1.bak", "other.db.key.tmp.5", "app.db.key.tmp",
        ]
        func plant() throws {
            for name in ours + others {
                try Data("{".utf8).write(to: URL(fileURLWithPath: directory.file(name)))
            }
            try? FileManager.default.removeItem(atPath: directory.file("app.db.key.tmp.77"))
            try FileManager.default.createSymbolicLink(
                atPath: directory.file("app.db.key.tmp.77"), withDestinationPath: target)
        }
        func expectCleaned(_ step: String) throws {
            let names = Set(try FileManager.default.contentsOfDirectory(atPath: directory.path))
            for name in ours { #expect(!names.contains(name), "\(step): \(name) was left") }
            for name in others + ["app.db.key.tmp.77"] { #expect(names.contains(name), "\(step): \(name) was removed") }
            #expect(try String(contentsOfFile: target, encoding: .utf8) == "keep me", "\(step): the link was followed")
        }

        try plant()
        try await manager.open().close()
        #expect(
            Set(try FileManager.default.contentsOfDirectory(atPath: directory.path)).isSuperset(of: ours),
            "a shared open removes nothing")
        try await manager.rotateKey()
        try expectCleaned("rotate")

        // A pending change, settled by the next open under the exclusive lock.
        try plant()
        let failing = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(kms), configuration: .init(kekId: "k"), logger: silentLogger,
            faultInjector: { if $0 == .writingFinalKeyFile { throw DBKeyError(.io, "injected") } })
        await expectError(.io) { try await failing.rotateKey() }
        try plant()
        try await manager.open().close()
        try expectCleaned("settling")
        #expect(try manager.load().pending == nil && manager.load().version == 3)
    }

    @Test("a migration removes what a killed migration left beside the plaintext database")
    func migration() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("plain.db")
        let db = try DatabaseConnection.open(path: path, keying: .plaintext, create: true)
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        db.close()
        try Data("{".utf8).write(to: URL(fileURLWithPath: path + ".key.tmp.42"))
        try await DatabaseKeyManager(
            databasePath: path, kms: MockKms(seed: 82), configuration: .init(kekId: "k"), logger: silentLogger
        ).migrate(from: .plaintext)
        #expect(!FileManager.default.fileExists(atPath: path + ".key.tmp.42"))
    }
}
