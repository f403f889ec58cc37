/// What a KMS said when it throttled a request: the ``DBKeyError/underlying`` of the
/// ``DBKeyError/Code-swift.struct/kmsUnavailable`` error a provider throws for AWS KMS's
/// `ThrottlingException` or an HTTP 429.
///
/// ``RetryPolicy`` retries a throttled request until its ``RetryPolicy/throttleDeadline``,
/// waiting as long as the KMS asked (`Retry-After`) or backing off exponentially with jitter, and
/// tells the run's ``KmsRateLimiter``, which then sends fewer requests at once.
public struct KmsThrottling: Error, Sendable, Hashable {
    /// How long the KMS asked the caller to wait (its `Retry-After`), when it said.
    public let retryAfter: Duration?

    /// Creates a throttling answer.
    public init(retryAfter: Duration?) {
        self.retryAfter = retryAfter
    }
}

extension DBKeyError {
    /// The throttling answer this error reports, when the KMS throttled the request.
    public var throttling: KmsThrottling? { underlying as? KmsThrottling }

    /// The same error, reporting that the KMS throttled the request (and asked for a wait of
    /// `retryAfter`).
    package func throttled(retryAfter: Duration?) -> DBKeyError {
        DBKeyError(
            code, message, resultCode: resultCode, errno: errno, path: path, kekId: kekId,
            underlying: KmsThrottling(retryAfter: retryAfter))
    }
}
