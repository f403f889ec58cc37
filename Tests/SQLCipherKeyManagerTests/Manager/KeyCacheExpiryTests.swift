import Foundation
@testable import SQLCipherKeyManager
import Synchronization
import Testing

/// The key cache's expiry holds when Swift's cooperative pool is starved.
@Suite("Key cache expiry", .tags(.core))
struct KeyCacheExpiryTests {
    /// The record a cached key belongs to; the cache looks only at its version and wrapped key.
    let keyFile = KeyFile(
        kms: "mock", kekId: "k", encryptedDek: WrappedDataKey(encoded: "AQID"), createdAt: KeyFile.now(),
        encryptionContext: .empty, keyCheck: KeyCheck(bytes: Array(repeating: 1, count: 16))!,
        rotationPeriodDays: nil, cipher: CipherSettings(pageSize: 4096))

    /// Where the blocking tasks and the watcher meet: how many tasks are blocked, and whether
    /// the entry has gone.
    final class Gate: @unchecked Sendable {
        private let condition = NSCondition()
        private var blocked = 0
        private var dropped = false

        /// Called by a task: counts it as blocked, and blocks its thread until the entry has
        /// gone. Returns `false` when two minutes pass first.
        func blockUntilDropped() -> Bool {
            condition.lock()
            defer { condition.unlock() }
            blocked += 1
            condition.broadcast()
            while !dropped {
                guard condition.wait(until: Date(timeIntervalSinceNow: 120)) else { return false }
            }
            return true
        }

        /// Called by the watcher: waits until `count` tasks are blocked (a minute at most).
        func waitForBlocked(_ count: Int) {
            condition.lock()
            defer { condition.unlock() }
            while blocked < count {
                guard condition.wait(until: Date(timeIntervalSinceNow: 60)) else { return }
            }
        }

        /// Called by the watcher: the entry has gone; the tasks may go.
        func markDropped() {
            condition.lock()
            dropped = true
            condition.broadcast()
            condition.unlock()
        }
    }

    @Test("a cached key is dropped at its TTL while every thread of the cooperative pool is blocked")
    func expiryUnderAStarvedPool() async throws {
        let cache = DataKeyCache(timeToLive: .milliseconds(500))
        // One blocking task per cooperative thread. A thread outside the pool stores the key once
        // every one of them is blocked, waits for the entry to go, and only then lets them go: the
        // entry is dropped while no task can run. The waits have generous bounds and nothing is
        // timed: a cache that needed the pool would keep the key until the blockers gave up.
        let width = ProcessInfo.processInfo.activeProcessorCount
        let gate = Gate()
        let key = try SecureBuffer.random(count: 32)
        let keyFile = keyFile
        let watcher = Thread {
            gate.waitForBlocked(width)
            cache.store(key, for: keyFile)
            let deadline = ContinuousClock.now + .seconds(60)
            while cache.count > 0 && ContinuousClock.now < deadline {
                usleep(5_000)
            }
            if cache.count == 0 {
                gate.markDropped()
            }
        }
        watcher.start()
        let releasedByTheDrop = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<width {
                group.addTask { gate.blockUntilDropped() }
            }
            return await group.allSatisfy { $0 }
        }
        #expect(releasedByTheDrop, "the expired key was still cached while every cooperative thread was blocked")
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
