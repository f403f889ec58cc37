import Foundation
import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// The call an app makes on every launch.
@Suite("openOrCreate", .tags(.core))
struct OpenOrCreateTests {
    func manager(_ path: String, _ kms: MockKms) -> DatabaseKeyManager {
        // A long wait: under the full suite the first launch's fsyncs can take seconds.
        DatabaseKeyManager(
            databasePath: path, kms: kms, configuration: .init(kekId: "k", openWait: .seconds(60)), logger: silentLogger
        )
    }

    @Test("the first launch creates, every later launch opens what is there (the README's example, run twice)")
    func launches() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 71)
        let path = directory.file("app.db")
        for launch in 1...3 {
            let db = try await manager(path, kms).openOrCreate()
            try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
            try db.execute("INSERT INTO note(body) VALUES (?)", arguments: [.text("launch \(launch)")])
            #expect(try db.fetchAll("SELECT count(*) FROM note").first?[0] == .integer(Int64(launch)))
        }
        #expect(kms.calls(of: .generateDataKey).count == 1)
    }

    @Test("two first launches at once: one creates, both open the same database")
    func concurrentFirstLaunches() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 72)
        let path = directory.file("app.db")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    let db = try await manager(path, kms).openOrCreate()
                    try db.execute("CREATE TABLE IF NOT EXISTS t(x)")
                }
            }
            try await group.waitForAll()
        }
        #expect(try manager(path, kms).load().version == 1)
    }

    @Test("it never replaces: a .key without its database and a database without its .key are refused, untouched")
    func neverReplaces() async throws {
        let directory = try TemporaryDirectory()
        let kms = MockKms(seed: 73)
        let path = directory.file("app.db")
        try await manager(path, kms).openOrCreate().close()
        try FileManager.default.moveItem(atPath: path, toPath: path + ".moved")
        await expectError(.databaseNotFound) { _ = try await manager(path, kms).openOrCreate() }
        #expect(!FileManager.default.fileExists(atPath: path))
        try FileManager.default.moveItem(atPath: path + ".moved", toPath: path)
        try FileManager.default.moveItem(atPath: path + ".key", toPath: path + ".key.moved")
        let bytes = try contents(path)
        await expectError(.keyFileMissing) { _ = try await manager(path, kms).openOrCreate() }
        #expect(try contents(path) == bytes && !FileManager.default.fileExists(atPath: path + ".key"))
    }
}
