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
            let call = calls.withLock {
                $0 += 1; return $0
            }
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

        // Without a Retry-After the call backs off and tries again, however few attempts the
        // policy allows for other failures.
        let once = RetryPolicy(attempts: 1, initialBackoff: .milliseconds(1), throttleDeadline: .seconds(600))
        let calls = Mutex(0)
        let answer = try await once.run("test", logger: silentLogger) { () async throws -> Int in
            let call = calls.withLock {
                $0 += 1; return $0
            }
            guard call > 3 else { throw Self.throttled(after: nil) }
            return call
        }
        #expect(answer == 4)
    }

    /// A KMS with a quota of `perSecond` requests a second (a token bucket of one), retrying
    /// as the HTTP providers do; it counts what it throttled.
    final class QuotaKms: KeyManagementService {
        let interval: Duration
        let inner = MockKms()
        let retry = RetryPolicy(initialBackoff: .milliseconds(2), throttleDeadline: .seconds(600))
        let state = Mutex((next: ContinuousClock.now, throttled: 0, health: 0))

        init(perSecond: Int) { interval = .seconds(1) / perSecond }

        var providerName: String { inner.providerName }

        func attempt<Result>(_ work: () async throws -> Result) async throws -> Result {
            try await retry.run("quota", logger: silentLogger) {
                let admitted = state.withLock { state -> Bool in
                    let now = ContinuousClock.now
                    guard now >= state.next else {
                        state.throttled += 1
                        return false
                    }
                    state.next = now + interval
                    return true
                }
                guard admitted else { throw KmsThrottlingTests.throttled(after: nil) }
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

    /// 16 workers at once, as `--jobs 16` sends them, each unwrapping 25 times through
    /// `provider`; whether every unwrap gave the key back.
    static func unwrapFromSixteen(_ provider: any KeyManagementService, _ dataKey: DataKey) async throws -> Bool {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    var all = true
                    for _ in 0..<25 {
                        all =
                            try await provider.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: [:])
                            == dataKey.plaintext && all
                    }
                    return all
                }
            }
            return try await group.allSatisfy { $0 }
        }
    }

    @Test(
        "A KMS with a quota: through a limiter every request succeeds, each throttling answer is counted, and the rate falls below the quota"
    )
    func adaptiveRate() async throws {
        let kms = QuotaKms(perSecond: 400)
        let dataKey = try await kms.inner.generateDataKey(kekId: "default", context: [:])
        let limiter = KmsRateLimiter(requestsPerSecond: nil)
        let provider = try KmsRegistry(kms).rateLimited(limiter).provider(named: kms.providerName)
        #expect(try await Self.unwrapFromSixteen(provider, dataKey))
        let throttled = kms.state.withLock { $0.throttled }
        #expect(limiter.requests == 400)
        #expect(throttled > 0 && limiter.throttled == throttled, "\(limiter.throttled) of \(throttled)")
        let lowest = try #require(limiter.lowestRate)
        #expect(lowest >= KmsRateLimiter.slowestAdaptiveRate && lowest < 400, "\(lowest)")
    }

    @Test("A fleet run asks each KEK's health once, and counts it as one request")
    func healthOncePerRun() async throws {
        let kms = QuotaKms(perSecond: 1_000_000)
        let limiter = KmsRateLimiter(requestsPerSecond: nil)
        let provider = try KmsRegistry(kms).rateLimited(limiter).provider(named: kms.providerName)
        for _ in 0..<20 {
            #expect(try await provider.health(kekId: "default").keyState == "Enabled")
        }
        _ = try await provider.health(kekId: "other")
        #expect(kms.state.withLock { $0.health } == 2 && limiter.requests == 2)
        #expect(limiter.lowestRate == nil && limiter.throttled == 0)
    }

    /// A provider that answers every customisation point of the protocol its own way.
    struct Particular: MockBacked {
        let inner = MockKms()
        var providerName: String { "particular" }
        func kekVersion(of wrapped: WrappedDataKey) -> String? { "v\(wrapped.encoded.count)" }
        func claimsLegacyKekId(_ kekId: String) -> Bool { kekId.hasPrefix("mine/") }
        func primaryRefusal(kekId: String) -> String? { kekId.hasPrefix("sealed/") ? "bound to PCRs" : nil }
    }

    @Test("A provider through a limiter answers as it does itself: key versions, legacy ids, a refused primary")
    func forwardsCustomisation() throws {
        let limited = try KmsRegistry(Particular()).rateLimited(KmsRateLimiter(requestsPerSecond: nil))
            .provider(named: "particular")
        #expect(limited.kekVersion(of: WrappedDataKey(encoded: "abcde")) == "v5")
        #expect(limited.claimsLegacyKekId("mine/k") && !limited.claimsLegacyKekId("theirs/k"))
        #expect(
            limited.primaryRefusal(kekId: "sealed/k") == "bound to PCRs" && limited.primaryRefusal(kekId: "k") == nil)
    }

    /// A provider written before versions became strings: it implements only the deprecated
    /// `keyVersion(of:)`.
    struct NumberedVersions: MockBacked {
        let inner = MockKms()
        var providerName: String { "numbered" }
        func keyVersion(of wrapped: WrappedDataKey) -> Int? { wrapped.encoded.hasPrefix("n") ? 7 : nil }
    }

    @Test("A provider that numbers its versions the old way still shows them, directly and through a limiter")
    func numberedVersions() throws {
        let provider = NumberedVersions()
        let limited = try KmsRegistry(provider).rateLimited(KmsRateLimiter(requestsPerSecond: nil))
            .provider(named: "numbered")
        for kms in [provider, limited] as [any KeyManagementService] {
            #expect(kms.kekVersion(of: WrappedDataKey(encoded: "n:abc")) == "7")
            #expect(kms.kekVersion(of: WrappedDataKey(encoded: "abc")) == nil)
        }
        #expect(MockKms().kekVersion(of: WrappedDataKey(encoded: "n:abc")) == nil)
        let health = KmsHealth(kekId: "k", keyState: "Enabled", latency: .zero, latestKekVersion: "0a1b")
        #expect(health.isOutdated("ffff") && !health.isOutdated("0a1b") && !health.isOutdated(nil))
        #expect(!KmsHealth(kekId: "k", keyState: "Enabled", latency: .zero).isOutdated("1"))
    }
}

/// A test provider whose wrapping is a `MockKms`'s: it declares only what it does differently.
protocol MockBacked: KeyManagementService {
    var inner: MockKms { get }
}

extension MockBacked {
    func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        try await inner.generateDataKey(kekId: kekId, context: context)
    }

    func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer {
        try await inner.decrypt(wrapped, kekId: kekId, context: context)
    }

    func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        try await inner.encrypt(key, kekId: kekId, context: context)
    }

    func health(kekId: String) async throws -> KmsHealth { try await inner.health(kekId: kekId) }
}
