import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Synchronization
import Testing

/// Long key changes say which step they are in, in order.
@Suite("Progress phases", .tags(.core))
struct ProgressPhaseTests {
    @Test("a migration reports copying, then verifying, then synchronizing; a rotation reports rekeying")
    func phases() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("p.db")
        let db = try DatabaseConnection.open(path: path, keying: .plaintext, create: true)
        try db.execute("CREATE TABLE t(x)")
        try db.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000) INSERT INTO t SELECT randomblob(500) FROM c"
        )
        db.close()
        let seen = Mutex<[KeyChangeProgress.Phase]>([])
        let manager = DatabaseKeyManager(
            databasePath: path, kms: MockKms(seed: 111), configuration: .init(kekId: "k"), logger: silentLogger)
        try await manager.migrate(from: .plaintext) { progress in seen.withLock { $0.append(progress.phase) } }
        let migration = seen.withLock { phases in phases }
        // Consecutive duplicates folded: the copy may report several times, or not at all when fast.
        let steps = migration.reduce(into: [KeyChangeProgress.Phase]()) { if $0.last != $1 { $0.append($1) } }
        #expect(steps.suffix(2) == [.verifying, .synchronizing], "\(steps)")
        #expect(steps.allSatisfy { [.copying, .verifying, .synchronizing].contains($0) }, "\(steps)")
        seen.withLock { $0.removeAll() }
        try await manager.rotateKey { progress in seen.withLock { $0.append(progress.phase) } }
        #expect(seen.withLock { $0 }.allSatisfy { $0 == .rekeying })
    }
}
