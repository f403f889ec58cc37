import Foundation
import Synchronization
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting

/// Throttling answers: retried within the deadline, `Retry-After` honoured, and a fleet run's
/// limiter sending fewer requests at once when the KMS throttles.
@Suite("KMS throttling", .tags(.core))
struct KmsThrottlingTests {
    @Test("Retry-After: seconds or an HTTP date, a past date is no wait, anything else is none")
    func retryAfter() {
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        for seconds in [0, 1, 7, 120, 86_400] {
            #expect(RetryAfter.parse("\(seconds)", now: now) == .seconds(seconds))
            #expect(RetryAfter.parse(" \(seconds) ", now: now) == .seconds(seconds))
        }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        for seconds in [0, 3, 59, 3600] {
            let header = formatter.string(from: now.addingTimeInterval(Double(seconds)))
            #expect(RetryAfter.parse(header, now: now) == .seconds(seconds), "\(header)")
        }
        #expect(RetryAfter.parse(formatter.string(from: now.addingTimeInterval(-30)), now: now) == .zero)
        // A number too long for an Int still asks for a wait longer than the longest deadline.
        #expect(RetryAfter.parse(String(repeating: "9", count: 40), now: now)! > .seconds(3600))
        for junk in [nil, "", " ", "-1", "1.5", "soon", "Sun, 99 Foo 2026 99:99:99 GMT", "0x10"] {
            #expect(RetryAfter.parse(junk, now: now) == nil, "\(junk ?? "nil")")
        }
    }

    static func throttled(after wait: Duration?) -> DBKeyError {
        DBKeyError(.kmsUnavailable, "throttled").throttled(retryAfter: wait)
    }

    @Test("A throttled call is retried past the attempt count, waiting at least each Retry-After")
    func retriedPastAttempts() async throws {
        let policy = RetryPolicy(attempts: 2, initialBackoff: .milliseconds(1), throttleDeadline: .seconds(60))
        let calls = Mutex(0)
        let clock = ContinuousClock()
        let started = clock.now
        let answer = try await policy.run("test", logger: silentLogger) { () async throws -> Int in
            let call = calls.withLock { $0 += 1; return $0 }
            // Five throttling answers (more than `attempts`), two of them asking for 300 ms.
            guard call > 5 else { throw Self.throttled(after: call.isMultiple(of: 2) ? .milliseconds(300) : nil) }
            return call
        }
        #expect(answer == 6)
        #expect(clock.now - started >= .milliseconds(600), "each Retry-After was waited for")

        // A plain outage still stops at `attempts`.
        calls.withLock { $0 = 0 }
        await expectError(.kmsUnavailable, containing: ["down"]) {
            _ = try await policy.run("test", logger: silentLogger) { () async throws -> Int in
                calls.withLock { $0 += 1 }
                throw DBKeyError(.kmsUnavailable, "down")
            }
        }
        #expect(calls.withLock { $0 } == 2)
    }

    @Test("A throttled call gives up at the deadline, not after waiting a Retry-After that ends past it")
    func deadline() async throws {
        let policy = RetryPolicy(attempts: 100, initialBackoff: .milliseconds(1), throttleDeadline: .seconds(1))
        let clock = ContinuousClock()
        let started = clock.now
        do {
            _ = try await policy.run("test", logger: silentLogger) { () async throws -> Int in
                throw Self.throttled(after: .seconds(30))
            }
            Issue.record("a call throttled past its deadline succeeded")
        } catch let error as DBKeyError {
            #expect(error.code == .kmsUnavailable && error.throttling == KmsThrottling(retryAfter: .seconds(30)))
            #expect(error.message.contains(RetryPolicy.throttleDeadlineVariable) && error.message.contains("1 times"))
        }
        #expect(clock.now - started < .seconds(30), "the 30 s Retry-After was not waited for")

        // Backing off without Retry-After: several tries, then the deadline.
        let calls = Mutex(0)
        await expectError(.kmsUnavailable, containing: ["throttled"]) {
            _ = try await policy.run("test", logger: silentLogger) { () async throws -> Int in
                calls.withLock { $0 += 1 }
                throw Self.throttled(after: nil)
            }
        }
        #expect(calls.withLock { $0 } > 2)
    }

    /// A KMS that throttles every request beyond `capacity` in flight at once, retrying as the
    /// HTTP providers do, and records how many it had in flight.
    final class CrowdedKms: KeyManagementService {
        let capacity: Int
        let inner = MockKms()
        let retry = RetryPolicy(initialBackoff: .milliseconds(2), throttleDeadline: .seconds(600))
        /// (in flight, most in flight since the first throttle, throttling answers, health calls).
        let state = Mutex((inFlight: 0, mostAfterThrottling: 0, throttled: 0, health: 0))

        init(capacity: Int) { self.capacity = capacity }

        var providerName: String { inner.providerName }

        func attempt<Result>(_ work: () async throws -> Result) async throws -> Result {
            try await retry.run("crowded", logger: silentLogger) {
                let admitted = state.withLock { state -> Bool in
                    state.inFlight += 1
                    if state.throttled > 0 { state.mostAfterThrottling = max(state.mostAfterThrottling, state.inFlight) }
                    guard state.inFlight <= capacity else {
                        state.inFlight -= 1
                        state.throttled += 1
                        return false
                    }
                    return true
                }
                guard admitted else { throw KmsThrottlingTests.throttled(after: nil) }
                defer { state.withLock { $0.inFlight -= 1 } }
                try await Task.sleep(for: .milliseconds(2))
                return try await work()
            }
        }

        func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
            try await attempt { try await inner.generateDataKey(kekId: kekId, context: context) }
        }
        func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
            -> SecureBuffer
        {
            try await attempt { try await inner.decrypt(wrapped, kekId: kekId, context: context) }
        }
        func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
            try await attempt { try await inner.encrypt(key, kekId: kekId, context: context) }
        }
        func health(kekId: String) async throws -> KmsHealth {
            state.withLock { $0.health += 1 }
            return try await inner.health(kekId: kekId)
        }
    }

    @Test("A throttling KMS: the limiter halves the requests in flight, every request succeeds, each answer is counted")
    func adaptiveConcurrency() async throws {
        let kms = CrowdedKms(capacity: 3)
        let limiter = KmsRateLimiter(requestsPerSecond: nil)
        let provider = try KmsRegistry(kms).rateLimited(limiter).provider(named: kms.providerName)
        let dataKey = try await kms.inner.generateDataKey(kekId: "default", context: [:])
        // 16 workers at once, as `--jobs 16` sends them, against a KMS that takes 3.
        let unwrapped = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    var all = true
                    for _ in 0..<25 {
                        all = try await provider.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: [:])
                            == dataKey.plaintext && all
                    }
                    return all
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(unwrapped == 16, "every request succeeded")
        let seen = kms.state.withLock { $0 }
        #expect(limiter.requests == 400)
        #expect(seen.throttled > 0 && limiter.throttled == seen.throttled, "\(limiter.throttled) of \(seen.throttled)")
        let lowest = try #require(limiter.lowestConcurrency)
        #expect((1...3).contains(lowest), "\(lowest)")
        // Without the limiter, 16 would be in flight to the end; it keeps them near the KMS's 3.
        #expect(seen.mostAfterThrottling <= 8, "\(seen.mostAfterThrottling) in flight after throttling began")
    }

    @Test("A fleet run asks each KEK's health once, and counts it as one request")
    func healthOncePerRun() async throws {
        let kms = CrowdedKms(capacity: 100)
        let limiter = KmsRateLimiter(requestsPerSecond: nil)
        let provider = try KmsRegistry(kms).rateLimited(limiter).provider(named: kms.providerName)
        for _ in 0..<20 {
            #expect(try await provider.health(kekId: "default").keyState == "Enabled")
        }
        _ = try await provider.health(kekId: "other")
        #expect(kms.state.withLock { $0.health } == 2 && limiter.requests == 2)
        #expect(limiter.lowestConcurrency == nil && limiter.throttled == 0)
    }
}
