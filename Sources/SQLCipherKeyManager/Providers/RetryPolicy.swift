import Foundation
import Logging

/// How the HTTP providers (AWS KMS, Vault Transit, Cloud KMS, Key Vault) retry a failed call.
///
/// Only ``DBKeyError/Code-swift.struct/kmsUnavailable`` is retried — throttling, 5xx answers,
/// timeouts, refused connections — with exponential backoff and jitter. Every operation DBKey
/// sends is free of side effects in the KMS, so a retry can never apply anything twice.
///
/// A throttled call (``DBKeyError/throttling``) is not a failure of the KMS: it is retried for as
/// long as ``throttleDeadline`` allows, not ``attempts`` times, each wait at least the KMS's
/// `Retry-After` and otherwise a random time up to a doubling bound (full jitter), and each
/// throttling answer is reported to the ``KmsRateLimiter`` the call runs under.
public struct RetryPolicy: Sendable {
    /// Tries in all, the first included.
    public var attempts: Int
    /// The limit for one try, from sending to the last byte of the answer.
    public var timeout: Duration
    /// The first backoff; each later one doubles, up to ``maximumBackoff``, with jitter.
    public var initialBackoff: Duration
    /// The longest backoff.
    public var maximumBackoff: Duration
    /// How long after its first try a throttled call may still be retried.
    public var throttleDeadline: Duration

    /// Creates a policy. The defaults: 3 attempts, 10 s each; a throttled call retried for up to
    /// 60 s.
    public init(
        attempts: Int = 3,
        timeout: Duration = .seconds(10),
        initialBackoff: Duration = .milliseconds(100),
        maximumBackoff: Duration = .seconds(2),
        throttleDeadline: Duration = .seconds(60)
    ) {
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
        self.throttleDeadline = throttleDeadline
    }

    /// The environment variable that sets the time limit of one KMS call, in seconds.
    public static let timeoutVariable = "DBKEY_KMS_TIMEOUT_SECONDS"

    /// The environment variable that sets ``throttleDeadline``, in seconds.
    public static let throttleDeadlineVariable = "DBKEY_KMS_THROTTLE_SECONDS"

    /// The default policy with the time limit from ``timeoutVariable`` and the number of tries
    /// from `attemptsVariable`, which counts the first try too (`AWS_MAX_ATTEMPTS`) or only the
    /// retries (`VAULT_MAX_RETRIES`).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a value out of range.
    package static func fromEnvironment(
        _ environment: ProviderEnvironment,
        attemptsVariable: String,
        countsFirstAttempt: Bool
    ) throws -> RetryPolicy {
        var policy = RetryPolicy()
        if let text = environment[attemptsVariable] {
            let minimum = countsFirstAttempt ? 1 : 0
            guard let count = Int(text), count >= minimum, count <= 100 else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(attemptsVariable) must be a whole number from \(minimum) to 100; got \"\(text)\".")
            }
            policy.attempts = countsFirstAttempt ? count : count + 1
        }
        if let text = environment[timeoutVariable] {
            guard let seconds = Double(text), seconds > 0, seconds <= 600 else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(timeoutVariable) must be a number of seconds from 0 to 600; got \"\(text)\".")
            }
            policy.timeout = .seconds(seconds)
        }
        if let text = environment[throttleDeadlineVariable] {
            guard let seconds = Double(text), seconds >= 0, seconds <= 3600 else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(throttleDeadlineVariable) must be a number of seconds from 0 to 3600; got \"\(text)\".")
            }
            policy.throttleDeadline = .seconds(seconds)
        }
        return policy
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not retryable, the tries
    /// run out or, for throttling, the ``throttleDeadline`` passes; logs each retry at debug
    /// level.
    package func run<Result>(
        _ operation: String,
        logger: Logger,
        _ attempt: () async throws -> Result
    ) async throws -> Result {
        let clock = ContinuousClock()
        let deadline = clock.now + throttleDeadline
        var failures = 0
        var throttles = 0
        while true {
            do {
                return try await attempt()
            } catch let error as DBKeyError where error.code == .kmsUnavailable {
                let wait: Duration
                if let throttling = error.throttling {
                    throttles += 1
                    KmsRateLimiter.current?.throttled()
                    let bound = min(maximumBackoff * 8, initialBackoff * (1 << min(throttles, 16)))
                    wait = max(throttling.retryAfter ?? .zero, bound * Double.random(in: 0...1))
                    guard clock.now + wait < deadline else {
                        throw error.adding(
                            "The KMS throttled this call \(throttles) times; DBKey gave up after \(throttleDeadline) (\(RetryPolicy.throttleDeadlineVariable))."
                        )
                    }
                } else {
                    failures += 1
                    guard failures < attempts else { throw error }
                    wait = min(maximumBackoff, initialBackoff * (1 << (failures - 1))) * Double.random(in: 0.5...1.0)
                }
                logger.debug(
                    "Retrying a KMS call",
                    metadata: [
                        "event": "kms.retry", "operation": "\(operation)", "attempt": "\(failures + throttles)",
                        "throttled": "\(error.throttling != nil)", "reason": "\(error.message)",
                    ]
                )
                try await Task.sleep(for: wait)
            }
        }
    }
}
