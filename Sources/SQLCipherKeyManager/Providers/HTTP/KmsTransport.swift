import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// An HTTP exchange with a KMS endpoint, kept small so that tests can count calls and inject
/// faults at exactly this boundary.
struct KmsHTTPRequest: Sendable {
    var url: URL
    var method: String
    var headers: [(name: String, value: String)]
    var body: Data
}

struct KmsHTTPResponse: Sendable {
    var status: Int
    var body: Data
}

/// Sends KMS requests. ``URLSessionKmsTransport`` is the real one.
protocol KmsTransport: Sendable {
    /// Sends one request and waits at most `timeout` for the whole response.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsUnavailable`` for timeouts and connection
    ///   failures.
    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse
}

/// KMS requests over FoundationNetworking's `URLSession`, with no cache, no cookies and no
/// credential storage.
struct URLSessionKmsTransport: KmsTransport {
    private let session: URLSession

    init() {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.urlCache = nil
        configuration.httpCookieStorage = nil
        configuration.urlCredentialStorage = nil
        session = URLSession(configuration: configuration)
    }

    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
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
                .kmsUnavailable, "The KMS at \(request.url.host ?? "?") did not answer within \(seconds) s.")
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // Refused connections, resets, DNS failures: FoundationNetworking reports them as
            // NSURLErrorDomain errors of several kinds; all of them mean "try again later".
            throw DBKeyError(
                .kmsUnavailable,
                "The KMS at \(request.url.host ?? "?") could not be reached: \((error as NSError).localizedDescription)."
            )
        }
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
                        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                        continuation.resume(returning: KmsHTTPResponse(status: status, body: data ?? Data()))
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
