import Synchronization

/// Counts the KMS requests of every provider a ``KmsRegistry`` hands out
/// (``KmsRegistry/rateLimited(_:)``) and, with a rate, holds them to at most that many a
/// second: a fleet operation stays under the KMS's quota and says how many requests it made.
public final class KmsRateLimiter: Sendable {
    private let interval: Duration?
    private let state = Mutex<(next: ContinuousClock.Instant, requests: Int)>((.now, 0))

    /// The rates a limiter takes: from one request in 1,000 seconds to a million a second.
    public static let rates: ClosedRange<Double> = 0.001...1_000_000

    /// Creates a limiter of `requestsPerSecond` (in ``rates``), or a counter only (`nil`).
    public init(requestsPerSecond: Double?) {
        precondition(requestsPerSecond.map { KmsRateLimiter.rates.contains($0) } ?? true, "a rate limit out of range")
        self.interval = requestsPerSecond.map { .nanoseconds(Int64(1_000_000_000 / $0)) }
    }

    /// The requests made so far.
    public var requests: Int { state.withLock { $0.requests } }

    /// Counts a request and waits for its turn.
    func acquire() async throws {
        let interval = interval
        let turn = state.withLock { state -> ContinuousClock.Instant? in
            state.requests += 1
            guard let interval else { return nil }
            let turn = max(state.next, .now)
            state.next = turn + interval
            return turn
        }
        if let turn {
            try await Task.sleep(until: turn, clock: .continuous)
        }
    }
}

/// A provider whose every request waits its turn at a ``KmsRateLimiter``.
struct RateLimitedKms: KeyManagementService {
    let base: any KeyManagementService
    let limiter: KmsRateLimiter

    var providerName: String { base.providerName }

    func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        try await limiter.acquire()
        return try await base.generateDataKey(kekId: kekId, context: context)
    }

    func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer {
        try await limiter.acquire()
        return try await base.decrypt(wrapped, kekId: kekId, context: context)
    }

    func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        try await limiter.acquire()
        return try await base.encrypt(key, kekId: kekId, context: context)
    }

    func health(kekId: String) async throws -> KmsHealth {
        try await limiter.acquire()
        return try await base.health(kekId: kekId)
    }

    func keyVersion(of wrapped: WrappedDataKey) -> Int? { base.keyVersion(of: wrapped) }

    func claimsLegacyKekId(_ kekId: String) -> Bool { base.claimsLegacyKekId(kekId) }
}
