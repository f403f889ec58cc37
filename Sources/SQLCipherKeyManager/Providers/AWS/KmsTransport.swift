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
        urlRequest.timeoutInterval = seconds
        for header in request.headers where header.name.lowercased() != "host" {
            urlRequest.setValue(header.value, forHTTPHeaderField: header.name)
        }
        do {
            // The session's own timeout covers idle time; this bounds the whole exchange.
            let prepared = urlRequest
            return try await withThrowingTaskGroup(of: KmsHTTPResponse.self) { group in
                group.addTask {
                    let (data, response) = try await session.data(for: prepared)
                    return KmsHTTPResponse(status: (response as? HTTPURLResponse)?.statusCode ?? 0, body: data)
                }
                group.addTask {
                    try await Task.sleep(for: timeout)
                    throw URLError(.timedOut)
                }
                let first = try await group.next()!
                group.cancelAll()
                return first
            }
        } catch let error as URLError where error.code == .timedOut {
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
}
