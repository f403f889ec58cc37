import Foundation
import Logging

/// How the HTTP providers (AWS KMS, Vault Transit) retry a failed call.
///
/// Only ``DBKeyError/Code-swift.struct/kmsUnavailable`` is retried — throttling, 5xx answers,
/// timeouts, refused connections — with exponential backoff and jitter. Every operation DBKey
/// sends is free of side effects in the KMS, so a retry can never apply anything twice.
public struct RetryPolicy: Sendable {
    /// Tries in all, the first included.
    public var attempts: Int
    /// The limit for one try, from sending to the last byte of the answer.
    public var timeout: Duration
    /// The first backoff; each later one doubles, up to ``maximumBackoff``, with jitter.
    public var initialBackoff: Duration
    /// The longest backoff.
    public var maximumBackoff: Duration

    /// Creates a policy. The defaults: 3 attempts, 10 s each.
    public init(
        attempts: Int = 3,
        timeout: Duration = .seconds(10),
        initialBackoff: Duration = .milliseconds(100),
        maximumBackoff: Duration = .seconds(2)
    ) {
        self.attempts = max(1, attempts)
        self.timeout = timeout
        self.initialBackoff = initialBackoff
        self.maximumBackoff = maximumBackoff
    }

    /// The environment variable that sets the time limit of one KMS call, in seconds.
    public static let timeoutVariable = "DBKEY_KMS_TIMEOUT_SECONDS"

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
        return policy
    }

    /// Runs `attempt` until it succeeds, fails with an error that is not retryable, or the
    /// tries run out; logs each retry at debug level.
    package func run<Result>(
        _ operation: String,
        logger: Logger,
        _ attempt: () async throws -> Result
    ) async throws -> Result {
        var number = 1
        while true {
            do {
                return try await attempt()
            } catch let error as DBKeyError where error.code == .kmsUnavailable && number < attempts {
                let backoff = min(maximumBackoff, initialBackoff * (1 << (number - 1)))
                logger.debug(
                    "Retrying a KMS call",
                    metadata: [
                        "event": "kms.retry", "operation": "\(operation)", "attempt": "\(number)",
                        "reason": "\(error.message)",
                    ]
                )
                try await Task.sleep(for: backoff * Double.random(in: 0.5...1.0))
                number += 1
            }
        }
    }
}
