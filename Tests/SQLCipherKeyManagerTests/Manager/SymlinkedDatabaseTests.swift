import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// One rule for a database path that is a symbolic link: refused, at every entry point, with
/// nothing changed on either side of the link.
@Suite("Symbolically linked database paths", .tags(.core))
struct SymlinkedDatabaseTests {
    enum EntryPoint: String, CaseIterable, Sendable {
        case initialize, openOrCreate, open, leaseKey, rotate, rewrap, migrate, verify, status
    }

    @Test(
        "every library entry point refuses the link; the target and the link stay as they were",
        arguments: EntryPoint.allCases)
    func library(entry: EntryPoint) async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 91)
        let target = directory.file("target.db")
        let link = directory.file("link.db")
        if entry == .migrate || entry == .initialize || entry == .openOrCreate {
            // A plaintext database behind the link.
            let db = try DatabaseConnection.open(path: target, keying: .plaintext, create: true)
            try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            db.close()
        } else {
            // A managed database whose .key sits beside the link.
            try await DatabaseKeyManager(
                databasePath: target, kms: kms, configuration: .init(kekId: "k"), logger: silentLogger
            ).initialize()
            try FileManager.default.copyItem(atPath: target + ".key", toPath: link + ".key")
        }
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        let before = try contents(target)
        let manager = DatabaseKeyManager(
            databasePath: link, kms: kms, configuration: .init(kekId: "k"), logger: silentLogger)
        let attempt: () async throws -> Void =
            switch entry {
            case .initialize: { try await manager.initialize() }
            case .openOrCreate: { _ = try await manager.openOrCreate() }
            case .open: { _ = try await manager.open() }
            case .leaseKey: { _ = try await manager.leaseKey() }
            case .rotate: { try await manager.rotateKey() }
            case .rewrap: { try await manager.rewrap(to: kms, kekId: "k2") }
            case .migrate: { try await manager.migrate(from: .plaintext) }
            case .verify: { _ = try await manager.verify() }
            case .status:
                {
                    if let error = try await manager.status().openError { throw error }
                }
            }
        await expectError(.invalidConfiguration, containing: ["symbolic link"]) { try await attempt() }
        #expect(try contents(target) == before)
        let attributes = try FileManager.default.attributesOfItem(atPath: link)
        #expect(attributes[.type] as? FileAttributeType == .typeSymbolicLink)
    }

    @Test("dbkey migrate of a link to a plaintext database exits 42 and leaves the plaintext target as it was")
    func cliMigrate() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let target = workspace.directory.file("target.db")
        let db = try DatabaseConnection.open(path: target, keying: .plaintext, create: true)
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        db.close()
        try FileManager.default.createSymbolicLink(atPath: workspace.database, withDestinationPath: target)
        let before = try contents(target)
        let result = try await workspace.dbkey("migrate", workspace.database, "--from-plaintext")
        #expect(result.status == 42, "\(result.stderr)")
        #expect(result.stderr.contains("symbolic link"))
        #expect(try contents(target) == before)
        #expect(!FileManager.default.fileExists(atPath: workspace.database + ".key"))
    }
}
