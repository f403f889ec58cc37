import Foundation
import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// A managed database whose file was emptied, cut short or replaced is damaged or the wrong
/// database — never silently a new one.
@Suite("Truncated or replaced database files", .tags(.engine, .core))
struct TruncatedDatabaseTests {
    enum Damage: String, CaseIterable, Sendable {
        case emptied, shorterThanOnePage, halfOfPageOne, anotherDatabase
    }

    @Test(
        "open, verify, status and rotate refuse it, journaling nothing; the file stays as it was",
        arguments: Damage.allCases)
    func refused(damage: Damage) async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 61)
        let path = directory.file("t.db")
        let manager = DatabaseKeyManager(
            databasePath: path, kms: kms, configuration: .init(kekId: "k"), logger: silentLogger)
        try await manager.initialize()
        try await manager.open().execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        let original = try contents(path)
        switch damage {
        case .emptied: try Data().write(to: URL(fileURLWithPath: path))
        case .shorterThanOnePage: try original.prefix(100).write(to: URL(fileURLWithPath: path))
        case .halfOfPageOne: try original.prefix(2048).write(to: URL(fileURLWithPath: path))
        case .anotherDatabase:
            let other = DatabaseKeyManager(
                databasePath: directory.file("other.db"), kms: kms, configuration: .init(kekId: "k"),
                logger: silentLogger)
            try await other.initialize()
            try FileManager.default.removeItem(atPath: path)
            try FileManager.default.copyItem(atPath: directory.file("other.db"), toPath: path)
        }
        let damaged = try contents(path)
        let codes: Set<DBKeyError.Code> = [.databaseDamaged, .wrongKey]
        for (name, attempt) in [
            ("open", { _ = try await manager.open() }),
            ("verify", { _ = try await manager.verify() }),
            ("rotate", { _ = try await manager.rotateKey() }),
        ] as [(String, () async throws -> Void)] {
            do {
                try await attempt()
                Issue.record("\(name) accepted a \(damage) database")
            } catch let error as DBKeyError {
                #expect(codes.contains(error.code), "\(name): \(error)")
            }
        }
        let status = try await manager.status()
        #expect(status.openError.map { codes.contains($0.code) } == true)
        #expect(try contents(path) == damaged, "nothing wrote a new database in its place")
        #expect(try manager.load().version == 1 && manager.load().pending == nil)
    }

    @Test("dbkey verify of an emptied database exits 11 (database-damaged) and writes nothing")
    func emptiedThroughTheCLI() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        try Data().write(to: URL(fileURLWithPath: workspace.database))
        let verify = try await workspace.dbkey("verify", workspace.database)
        #expect(verify.status == 11, "\(verify.stderr)")
        #expect(verify.stderr.contains("empty"))
        let write = try await workspace.dbkey("sql", workspace.database, "CREATE TABLE t(x)")
        #expect(write.status == 11)
        #expect(try contents(workspace.database).isEmpty)
    }
}
