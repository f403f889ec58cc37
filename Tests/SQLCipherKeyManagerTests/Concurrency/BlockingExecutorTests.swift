import Foundation
import Synchronization
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// Long C work runs on the package's own threads, never on Swift's cooperative pool.
@Suite("Blocking work off the cooperative pool", .tags(.core))
struct BlockingExecutorTests {
    @Test(
        "verify() of a 200 MB database on every core at once starve neither a timer task nor a short query on another connection"
    )
    func verifyDoesNotStarve() async throws {
        let directory = try TemporaryDirectory()
        let manager = DatabaseKeyManager(
            databasePath: directory.file("big.db"), kms: MockKms(seed: 31), configuration: .init(kekId: "k"),
            logger: silentLogger)
        try await manager.initialize()
        do {
            let db = try await manager.open()
            // Small rows and an index: integrity_check walks every cell and index entry, which
            // takes far longer than reading the same bytes as overflow pages.
            try db.execute("CREATE TABLE row(r)")
            try db.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 700000) INSERT INTO row SELECT randomblob(150) FROM c"
            )
            try db.execute("CREATE INDEX row_r ON row(r)")
        }
        let other = try await manager.open()
        // As many verifies as the machine has cores: on the cooperative pool they would hold
        // every one of its threads.
        let width = max(2, ProcessInfo.processInfo.activeProcessorCount)
        let start = ContinuousClock.now
        let finished = Mutex(false)
        let verifies = Task {
            defer { finished.withLock { $0 = true } }
            return try await withThrowingTaskGroup(of: Int64.self) { group in
                for _ in 0..<width { group.addTask { try await manager.verify().pageCount } }
                return try await group.reduce(into: [Int64]()) { $0.append($1) }
            }
        }
        var largestGap = Duration.zero
        var last = ContinuousClock.now
        var shortQueries = 0
        // The most threads the long lane had while the verifies ran: a thread idle for ten
        // seconds ends, so a count taken after them may miss one whose verify ended first.
        var longThreads = 0
        while ContinuousClock.now - start < .seconds(60) {
            try await Task.sleep(for: .milliseconds(20))
            let now = ContinuousClock.now
            largestGap = max(largestGap, now - last)
            last = now
            _ = try other.fetchAll("SELECT count(*) FROM sqlite_master")
            shortQueries += 1
            longThreads = max(longThreads, BlockingExecutor.shared.threadCount(.long))
            if finished.withLock({ $0 }) { break }
        }
        let pageCounts = try await verifies.value
        let verifyTime = ContinuousClock.now - start
        other.close()
        print(
            "executor test: \(width) verify() of \(pageCounts.first ?? 0) pages at once in \(verifyTime); largest timer gap \(largestGap), \(shortQueries) short queries"
        )
        #expect(
            pageCounts.allSatisfy { $0 > 50_000 },
            "a 200 MB database at 4 KiB pages: \(pageCounts) pages, verified in \(verifyTime)")
        #expect(verifyTime > .seconds(1), "long enough to have starved the pool")
        #expect(
            largestGap * 2 < verifyTime,
            "the timer task waited \(largestGap) while verify ran for \(verifyTime)")
        // Starved, the loop runs only before and after the verifies (7 times when measured with
        // the integrity check moved back onto the pool); alone it runs hundreds of times, and so
        // it does beside the whole suite, whose other tests keep the pool busy too (a 1.2 s gap
        // was seen then, so the bound is relative to the verify's time, not absolute).
        #expect(shortQueries >= 50, "\(shortQueries) short queries ran during \(verifyTime)")
        #expect(longThreads >= width, "each verify had a thread of its own: at most \(longThreads) threads")
    }
}
