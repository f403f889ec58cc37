import Synchronization

/// The KMS requests of one fleet run: every provider a ``KmsRegistry`` hands out
/// (``KmsRegistry/rateLimited(_:)``) sends through it.
///
/// It counts the requests; with a rate, holds them to at most that many a second; and, when the
/// KMS throttles a request (``KmsThrottling``), sends fewer at once: the number of requests in
/// flight is halved at each throttling answer (once for all the requests that were in flight
/// together) and grows back by one after as many successes as it allows. A KEK's
/// ``KeyManagementService/health(kekId:)`` is asked once per run.
public final class KmsRateLimiter: Sendable {
    private struct State {
        var next: ContinuousClock.Instant = .now
        var requests = 0
        var throttled = 0
        var inFlight = 0
        /// How many requests may be in flight; `nil` until the KMS first throttles one.
        var limit: Int?
        var lowestLimit: Int?
        var successesAtLimit = 0
        /// Bumped at each cut, so that the requests in flight together cut the limit once.
        var generation = 0
        var waiting: [CheckedContinuation<Int, Never>] = []
        var health: [String: KmsHealth] = [:]
    }

    private let interval: Duration?
    private let state = Mutex(State())

    /// The rates a limiter takes: from one request in 1,000 seconds to a million a second.
    public static let rates: ClosedRange<Double> = 0.001...1_000_000

    /// Creates a limiter of `requestsPerSecond` (in ``rates``), or one that only counts and
    /// adapts to throttling (`nil`).
    public init(requestsPerSecond: Double?) {
        precondition(requestsPerSecond.map { KmsRateLimiter.rates.contains($0) } ?? true, "a rate limit out of range")
        self.interval = requestsPerSecond.map { .nanoseconds(Int64(1_000_000_000 / $0)) }
    }

    /// The requests made so far.
    public var requests: Int { state.withLock { $0.requests } }

    /// The throttling answers so far (each retried).
    public var throttled: Int { state.withLock { $0.throttled } }

    /// The fewest requests the limiter let in flight at once after a throttling answer; `nil`
    /// when the KMS never throttled one.
    public var lowestConcurrency: Int? { state.withLock { $0.lowestLimit } }

    /// The request a task is sending through a limiter, for ``RetryPolicy`` to report a
    /// throttling answer to.
    struct Request: Sendable {
        let limiter: KmsRateLimiter
        let generation: Int

        func throttled() { limiter.throttled(generation: generation) }
    }

    @TaskLocal static var current: Request?

    /// Runs one KMS request: counts it, waits for its turn at the rate and for room in flight.
    func send<Result>(_ request: () async throws -> Result) async throws -> Result {
        try await waitForTurn()
        let generation = await enter()
        defer { leave() }
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

    private func waitForTurn() async throws {
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

    /// Waits for room in flight; returns the generation the request entered under.
    private func enter() async -> Int {
        await withCheckedContinuation { continuation in
            let generation = state.withLock { state -> Int? in
                guard state.inFlight < state.limit ?? .max else {
                    state.waiting.append(continuation)
                    return nil
                }
                state.inFlight += 1
                return state.generation
            }
            if let generation { continuation.resume(returning: generation) }
        }
    }

    private func leave() {
        let admitted = state.withLock { state -> [(CheckedContinuation<Int, Never>, Int)] in
            state.inFlight -= 1
            var admitted: [(CheckedContinuation<Int, Never>, Int)] = []
            while !state.waiting.isEmpty, state.inFlight < state.limit ?? .max {
                state.inFlight += 1
                admitted.append((state.waiting.removeFirst(), state.generation))
            }
            return admitted
        }
        for (continuation, generation) in admitted { continuation.resume(returning: generation) }
    }

    private func succeeded() {
        state.withLock { state in
            guard let limit = state.limit else { return }
            state.successesAtLimit += 1
            if state.successesAtLimit >= limit {
                state.limit = limit + 1
                state.successesAtLimit = 0
            }
        }
    }

    private func throttled(generation: Int) {
        state.withLock { state in
            state.throttled += 1
            guard generation == state.generation else { return }
            let limit = max(1, (state.limit ?? state.inFlight) / 2)
            state.limit = limit
            state.lowestLimit = min(state.lowestLimit ?? limit, limit)
            state.successesAtLimit = 0
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

    func keyVersion(of wrapped: WrappedDataKey) -> Int? { base.keyVersion(of: wrapped) }

    func claimsLegacyKekId(_ kekId: String) -> Bool { base.claimsLegacyKekId(kekId) }

    func primaryRefusal(kekId: String) -> String? { base.primaryRefusal(kekId: kekId) }
}
