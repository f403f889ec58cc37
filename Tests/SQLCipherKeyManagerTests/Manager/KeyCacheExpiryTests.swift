import Foundation
@testable import SQLCipherKeyManager
import Synchronization
import Testing

/// The key cache's expiry holds when Swift's cooperative pool is starved.
@Suite("Key cache expiry")
struct KeyCacheExpiryTests {
    /// The record a cached key belongs to; the cache looks only at its version and wrapped key.
    let keyFile = KeyFile(
        kms: "mock", kekId: "k", encryptedDek: WrappedDataKey(encoded: "AQID"), createdAt: KeyFile.now(),
        encryptionContext: .empty, keyCheck: KeyCheck(bytes: Array(repeating: 1, count: 16))!,
        rotationPeriodDays: nil, cipher: CipherSettings(pageSize: 4096))

    @Test("a cached key is dropped at its TTL while every thread of the cooperative pool is blocked")
    func expiryUnderAStarvedPool() async throws {
        let cache = DataKeyCache(timeToLive: .milliseconds(500))
        cache.store(try SecureBuffer.random(count: 32), for: keyFile)
        #expect(cache.count == 1)

        // A watcher outside the pool notes when the entry is gone.
        let droppedAfter = Mutex<Duration?>(nil)
        let start = ContinuousClock.now
        let watcher = Thread {
            while ContinuousClock.now - start < .seconds(6) {
                if cache.count == 0 {
                    droppedAfter.withLock { $0 = ContinuousClock.now - start }
                    return
                }
                usleep(10_000)
            }
        }
        watcher.start()
        // Block every cooperative thread (and more) for 3 s: no task can run meanwhile.
        let width = ProcessInfo.processInfo.activeProcessorCount + 2
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<width {
                group.addTask { usleep(3_000_000) }
            }
        }
        while droppedAfter.withLock({ $0 }) == nil && ContinuousClock.now - start < .seconds(7) {
            try await Task.sleep(for: .milliseconds(50))
        }
        let dropped = try #require(droppedAfter.withLock { $0 }, "the expired key was still cached after 6 s")
        #expect(dropped < .milliseconds(2900), "dropped after \(dropped), while the pool was blocked until 3 s")
        #expect(cache.key(for: keyFile) == nil)
    }

    @Test("an expired entry is never returned, even before the timer drops it")
    func expiryCheckedOnAccess() async throws {
        let cache = DataKeyCache(timeToLive: .milliseconds(100))
        cache.store(try SecureBuffer.random(count: 32), for: keyFile)
        #expect(cache.key(for: keyFile) != nil)
        usleep(150_000)  // Blocking on purpose: no chance for anything else to run first.
        #expect(cache.key(for: keyFile) == nil)
    }
}
