import Synchronization

/// The KMS requests of one fleet run: every provider a ``KmsRegistry`` hands out
/// (``KmsRegistry/rateLimited(_:)``) sends through it.
///
/// It counts the requests; with a rate, holds them to at most that many a second; and, when the
/// KMS throttles a request (``KmsThrottling``), slows down: the rate drops to 70% of the rate
/// the run was sending at (once for all the requests sent at that rate), then grows back by 2%
/// (at least one request a second) with each success, up to the rate it was given. A KEK's
/// ``KeyManagementService/health(kekId:)`` is asked once per run.
public final class KmsRateLimiter: Sendable {
    private struct State {
        var next: ContinuousClock.Instant = .now
        var requests = 0
        var throttled = 0
        /// The rate the requests are held to; `nil` while no rate was given and the KMS has not
        /// throttled.
        var rate: Double?
        var lowestRate: Double?
        /// When the last requests were sent, oldest first: the rate the run sends at.
        var recent: [ContinuousClock.Instant] = []
        /// Bumped at each cut, so that the requests sent at one rate cut it once.
        var generation = 0
        var health: [String: KmsHealth] = [:]
    }

    private let ceiling: Double?
    private let state: Mutex<State>

    /// The rates a limiter takes: from one request in 1,000 seconds to a million a second.
    public static let rates: ClosedRange<Double> = 0.001...1_000_000

    /// The slowest a throttling KMS makes a limiter go, unless it was given a slower rate.
    static let slowestAdaptiveRate = 1.0

    /// What a throttling answer multiplies the rate by (CUBIC's β, RFC 9438).
    static let cut = 0.7

    /// How many of the latest requests measure the rate the run sends at.
    private static let measured = 32

    /// Creates a limiter of at most `requestsPerSecond` (in ``rates``), or one that only counts
    /// and slows down when the KMS throttles (`nil`).
    public init(requestsPerSecond: Double?) {
        precondition(requestsPerSecond.map { KmsRateLimiter.rates.contains($0) } ?? true, "a rate limit out of range")
        ceiling = requestsPerSecond
        state = Mutex(State(rate: requestsPerSecond))
    }

    /// The requests made so far.
    public var requests: Int { state.withLock { $0.requests } }

    /// The throttling answers so far (each retried).
    public var throttled: Int { state.withLock { $0.throttled } }

    /// The lowest rate, in requests a second, that throttling brought the limiter down to; `nil`
    /// when the KMS never throttled a request.
    public var lowestRate: Double? { state.withLock { $0.lowestRate } }

    /// The request a task is sending through a limiter, for ``RetryPolicy`` to report a
    /// throttling answer to.
    struct Request: Sendable {
        let limiter: KmsRateLimiter
        let generation: Int

        func throttled() { limiter.throttled(generation: generation) }
    }

    @TaskLocal static var current: Request?

    /// Runs one KMS request: counts it and waits for its turn at the rate.
    func send<Result>(_ request: () async throws -> Result) async throws -> Result {
        let (turn, generation) = state.withLock { state -> (ContinuousClock.Instant, Int) in
            state.requests += 1
            let turn = max(state.next, .now)
            if let rate = state.rate {
                state.next = turn + .nanoseconds(Int64(1_000_000_000 / rate))
            }
            state.recent.append(turn)
            if state.recent.count > KmsRateLimiter.measured { state.recent.removeFirst() }
            return (turn, state.generation)
        }
        if turn > .now {
            try await Task.sleep(until: turn, clock: .continuous)
        }
        let result = try await KmsRateLimiter.$current.withValue(Request(limiter: self, generation: generation)) {
            try await request()
        }
        succeeded()
        return result
    }

    /// The health of `kekId` at `provider`, asked once per run.
    func health(of provider: any KeyManagementService, kekId: String) async throws -> KmsHealth {
        let key = provider.providerName + "\u{0}" + kekId
        if let known = state.withLock({ $0.health[key] }) { return known }
        let health = try await send { try await provider.health(kekId: kekId) }
        state.withLock { $0.health[key] = health }
        return health
    }

    private func succeeded() {
        state.withLock { state in
            guard state.lowestRate != nil, let rate = state.rate else { return }
            state.rate = min(ceiling ?? .infinity, rate + max(1, rate / 50))
        }
    }

    private func throttled(generation: Int) {
        state.withLock { state in
            state.throttled += 1
            guard generation == state.generation else { return }
            let sending: Double
            if let first = state.recent.first, let last = state.recent.last, last > first {
                let span = last - first
                sending =
                    Double(state.recent.count - 1)
                    / (Double(span.components.seconds) + Double(span.components.attoseconds) / 1e18)
            } else if let rate = state.rate {
                sending = rate
            } else {
                // One request, no rate to go by: its own retries wait, the run goes on as it was.
                return
            }
            let floor = min(ceiling ?? .infinity, KmsRateLimiter.slowestAdaptiveRate)
            let rate = max(floor, min(state.rate ?? .infinity, sending) * KmsRateLimiter.cut)
            state.rate = rate
            state.lowestRate = min(state.lowestRate ?? rate, rate)
            state.recent.removeAll()
            state.generation += 1
        }
    }
}

/// A provider whose every request goes through a ``KmsRateLimiter``.
struct RateLimitedKms: KeyManagementService {
    let base: any KeyManagementService
    let limiter: KmsRateLimiter

    var providerName: String { base.providerName }

    func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        try await limiter.send { try await base.generateDataKey(kekId: kekId, context: context) }
    }

    func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer {
        try await limiter.send { try await base.decrypt(wrapped, kekId: kekId, context: context) }
    }

    func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        try await limiter.send { try await base.encrypt(key, kekId: kekId, context: context) }
    }

    func health(kekId: String) async throws -> KmsHealth {
        try await limiter.health(of: base, kekId: kekId)
    }

    func kekVersion(of wrapped: WrappedDataKey) -> String? { base.kekVersion(of: wrapped) }

    @available(*, deprecated)
    func keyVersion(of wrapped: WrappedDataKey) -> Int? { base.keyVersion(of: wrapped) }

    func claimsLegacyKekId(_ kekId: String) -> Bool { base.claimsLegacyKekId(kekId) }

    func primaryRefusal(kekId: String) -> String? { base.primaryRefusal(kekId: kekId) }
}
