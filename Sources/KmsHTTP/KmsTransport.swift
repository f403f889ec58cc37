import Foundation
import Logging
import SQLCipherKeyManager

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// An HTTP exchange with a KMS endpoint, kept small so that tests can count calls and inject
/// faults at exactly this boundary.
package struct KmsHTTPRequest: Sendable {
    package var url: URL
    package var method: String
    package var headers: [(name: String, value: String)]
    package var body: Data

    package init(url: URL, method: String, headers: [(name: String, value: String)], body: Data) {
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
    }
}

package struct KmsHTTPResponse: Sendable {
    package var status: Int
    package var body: Data
    /// The response's headers, their names in lower case.
    package var headers: [String: String]

    package init(status: Int, body: Data, headers: [String: String] = [:]) {
        self.status = status
        self.body = body
        self.headers = headers
    }

    /// The value of the header `name` (in any case).
    package func header(_ name: String) -> String? { headers[name.lowercased()] }
}

/// Sends KMS requests. ``URLSessionKmsTransport`` is the real one.
package protocol KmsTransport: Sendable {
    /// Sends one request and waits at most `timeout` for the whole response.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsUnavailable`` for timeouts and connection
    ///   failures.
    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse
}

/// KMS requests over FoundationNetworking's `URLSession`, with no cache, no cookies and no
/// credential storage.
package struct URLSessionKmsTransport: KmsTransport {
    private let session: URLSession

    package init() {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.urlCache = nil
        configuration.httpCookieStorage = nil
        configuration.urlCredentialStorage = nil
        session = URLSession(configuration: configuration)
    }

    package func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        var urlRequest = URLRequest(url: request.url)
        urlRequest.httpMethod = request.method
        urlRequest.httpBody = request.body
        let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
        // FoundationNetworking truncates timeoutInterval to whole seconds (0.5 s fails at once,
        // 1.5 s waits 1 s), so it gets a whole second more and the timer below is the real bound.
        urlRequest.timeoutInterval = seconds.rounded(.up) + 1
        for header in request.headers where header.name.lowercased() != "host" {
            urlRequest.setValue(header.value, forHTTPHeaderField: header.name)
        }
        do {
            return try await exchange(urlRequest, timeout: timeout)
        } catch let error as URLError where error.code == .timedOut || error.code == .cancelled {
            throw DBKeyError(
                .kmsUnavailable, "The KMS at \(request.url.host ?? "?") did not answer within \(seconds) s.",
                underlying: error)
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as URLError where URLSessionKmsTransport.isCertificateFailure(error) {
            // Not a passing failure: retrying cannot help, and the server may not be the KMS.
            throw DBKeyError(
                .invalidConfiguration,
                "The TLS certificate of \(request.url.host ?? "?") was not accepted (\(error.localizedDescription)). DBKey trusts the system's CA certificates: add the CA that issued the server's certificate there (on Debian: /usr/local/share/ca-certificates, then update-ca-certificates).",
                underlying: error)
        } catch {
            // Refused connections, resets, DNS failures: FoundationNetworking reports them as
            // NSURLErrorDomain errors of several kinds; all of them mean "try again later".
            throw DBKeyError(
                .kmsUnavailable,
                "The KMS at \(request.url.host ?? "?") could not be reached: \((error as NSError).localizedDescription).",
                underlying: error
            )
        }
    }

    /// Whether `error` says the server's certificate did not verify. FoundationNetworking on
    /// Linux reports it as an unknown error (-1) with libcurl's message ("SSL certificate
    /// problem: …", "SSL: no alternative certificate subject name matches …"); Apple's
    /// URLSession has codes of its own for it.
    static func isCertificateFailure(_ error: URLError) -> Bool {
        let codes: Set<URLError.Code> = [
            .serverCertificateUntrusted, .serverCertificateHasUnknownRoot, .serverCertificateHasBadDate,
            .serverCertificateNotYetValid,
        ]
        return codes.contains(error.code)
            || (error.code == .unknown && error.localizedDescription.hasPrefix("SSL")
                && error.localizedDescription.contains("certificate"))
    }

    /// One exchange, bounded by a Dispatch timer that cancels the task: independent of Swift's
    /// cooperative pool, so a busy pool cannot stretch the timeout.
    private func exchange(_ request: URLRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        let state = ExchangeState()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<KmsHTTPResponse, any Error>) in
                let task = session.dataTask(with: request) { data, response, error in
                    guard let timedOut = state.finish() else { return }
                    if let error {
                        continuation.resume(throwing: timedOut ? URLError(.timedOut) : error)
                    } else {
                        let http = response as? HTTPURLResponse
                        var headers: [String: String] = [:]
                        for case let (name as String, value as String) in http?.allHeaderFields ?? [:] {
                            headers[name.lowercased()] = value
                        }
                        continuation.resume(
                            returning: KmsHTTPResponse(
                                status: http?.statusCode ?? 0, body: data ?? Data(), headers: headers))
                    }
                }
                state.task = task
                DispatchQueue.global().asyncAfter(
                    deadline: .now()
                        + .nanoseconds(
                            Int(
                                timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds
                                    / 1_000_000_000))
                ) {
                    state.timeOut()
                }
                task.resume()
            }
        } onCancel: {
            state.task?.cancel()
        }
    }
}

/// The shared state of one exchange: whether it finished, and whether the timer ended it.
private final class ExchangeState: @unchecked Sendable {
    // Guarded by `lock`; the task is set once before the timer or the callback can run.
    private let lock = NSLock()
    private var finished = false
    private var timedOut = false
    var task: URLSessionDataTask?

    /// Marks the exchange finished and tells whether the timer ended it; `nil` if it had
    /// already finished.
    func finish() -> Bool? {
        lock.lock()
        defer { lock.unlock() }
        if finished { return nil }
        finished = true
        return timedOut
    }

    func timeOut() {
        lock.lock()
        let pending = !finished
        if pending { timedOut = true }
        lock.unlock()
        if pending { task?.cancel() }
    }
}

/// The one call path of the HTTP providers: the body built with its secret field (which never
/// becomes a `String`) and wiped after the call, each attempt bounded by the policy's timeout,
/// retried while the failure is retryable, and an error answer mapped by the provider (a 429
/// reported as ``KmsThrottling``, with its `Retry-After`).
package struct KmsHTTPClient: Sendable {
    /// A request body.
    package enum Body {
        /// No body (a GET).
        case none
        /// A JSON object.
        case json([String: Any])
        /// A JSON object with one more field whose value is secret base64 text.
        case jsonWithSecret([String: Any], name: String, value: SecureBuffer)
        /// A body built by the caller in secure memory (an OAuth form holding a credential).
        case secret(SecureBuffer)
    }

    package let transport: any KmsTransport
    package let retry: RetryPolicy
    package let logger: Logger

    package init(transport: any KmsTransport, retry: RetryPolicy, logger: Logger) {
        self.transport = transport
        self.retry = retry
        self.logger = logger
    }

    /// This client with one attempt of at most 2 s: for a metadata service that is the last
    /// place credentials may be, and is simply absent on most machines.
    package func probing() -> KmsHTTPClient {
        KmsHTTPClient(
            transport: transport, retry: RetryPolicy(attempts: 1, timeout: min(retry.timeout, .seconds(2))),
            logger: logger)
    }

    /// Sends one operation and returns the body of its `200` answer.
    ///
    /// - Parameters:
    ///   - headers: The headers of one attempt, given the payload (signatures are made anew
    ///     for every attempt).
    ///   - mapError: Turns a non-200 answer into an error; its body is wiped afterwards.
    package func send(
        _ operation: String,
        method: String,
        url: URL,
        body: Body,
        headers: (Data) -> [(name: String, value: String)],
        mapError: (_ status: Int, _ body: Data) -> DBKeyError
    ) async throws -> Data {
        var payload: Data
        switch body {
        case .none: payload = Data()
        case .json(let object): payload = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        case .jsonWithSecret(let object, let name, let value):
            payload = try JSONSecretField.object(object, secrets: [(name, value)]).withUnsafeBytes { Data($0) }
        case .secret(let bytes): payload = bytes.withUnsafeBytes { Data($0) }
        }
        defer { payload.wipe() }
        return try await retry.run(operation, logger: logger) {
            let request = KmsHTTPRequest(url: url, method: method, headers: headers(payload), body: payload)
            var response = try await transport.send(request, timeout: retry.timeout)
            guard response.status == 200 else {
                defer { response.body.wipe() }
                let error = mapError(response.status, response.body)
                guard response.status == 429 else { throw error }
                throw error.throttled(retryAfter: RetryAfter.parse(response.header("Retry-After")))
            }
            return response.body
        }
    }
}
