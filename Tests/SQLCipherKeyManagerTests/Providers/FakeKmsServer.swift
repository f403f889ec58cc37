import Foundation
import Testing

@testable import KmsHTTP

/// What the fakes built on Scripts/fakes/common.py share (the fake Cloud KMS, the fake Key
/// Vault, moto's throttling front): an admin API with failure injection and a rate limit.
protocol FakeKmsServer {
    /// Where the admin API is (`/_fake/COMMAND` under it).
    static func adminURL() throws -> URL
    /// The token the admin API asks for.
    static func adminToken() throws -> String
}

extension FakeKmsServer {
    /// An admin command; its JSON answer.
    @discardableResult
    static func admin(_ command: String, _ body: [String: Any] = [:]) async throws -> [String: Any] {
        let response = try await URLSessionKmsTransport().send(
            KmsHTTPRequest(
                url: try adminURL().appendingPathComponent("_fake/\(command)"), method: "POST",
                headers: [("X-Fake-Admin", try adminToken())], body: try JSONSerialization.data(withJSONObject: body)),
            timeout: .seconds(10))
        #expect(response.status == 200, "admin \(command): \(String(decoding: response.body, as: UTF8.self))")
        return (try? JSONSerialization.jsonObject(with: response.body) as? [String: Any]) ?? [:]
    }

    /// The next `count` requests whose path contains `path` are answered with `status` (and
    /// `headers`), or held for `delay` seconds.
    static func fail(
        status: Int, count: Int = 1, path: String = "", delay: Double = 0, headers: [String: String] = [:]
    ) async throws {
        try await admin("fail", ["status": status, "count": count, "path": path, "delay": delay, "headers": headers])
    }

    /// Throttles (429) the requests whose path contains `path` beyond `rate` a second (`burst`
    /// at once), with `Retry-After: retryAfter` when given; `nil` lifts the limit. Resets the
    /// counts of ``rateLimitCounts()``.
    static func rateLimit(_ rate: Double?, burst: Int = 1, path: String = "", retryAfter: Int? = nil) async throws {
        var rule: [String: Any] = ["burst": burst, "path": path]
        if let rate { rule["rate"] = rate }
        if let retryAfter { rule["retry_after"] = retryAfter }
        try await admin("ratelimit", rule)
    }

    /// The requests the rate limit throttled and admitted since it was set.
    static func rateLimitCounts() async throws -> (throttled: Int, admitted: Int) {
        let answer = try await admin("ratelimit-stats")
        return (try #require(answer["throttled"] as? Int), try #require(answer["admitted"] as? Int))
    }
}
