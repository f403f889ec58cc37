import Foundation
import SQLCipherKeyManager

/// An OAuth 2.0 bearer token, in secure memory, with the instant to fetch a new one.
package struct BearerToken: Sendable {
    /// The token's bytes.
    package let value: SecureBuffer
    /// When the token should be replaced: before it expires, by a quarter of its lifetime or five
    /// minutes, whichever is less.
    package let refreshAt: ContinuousClock.Instant

    package init(value: SecureBuffer, lifetime: Duration) {
        self.value = value
        refreshAt = .now + lifetime - min(.seconds(300), lifetime / 4)
    }

    /// The `Authorization` header's value. An HTTP header is text, so the token becomes a
    /// `String` for the length of one request.
    package var authorization: String {
        "Bearer " + value.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// Reads a token endpoint's JSON answer (OAuth 2.0, Google's and Entra's token endpoints,
    /// the metadata and managed-identity endpoints): `access_token` goes straight into secure
    /// memory and is blanked in `body`; the lifetime comes from `expires_in` (a number or a
    /// string) or `expires_on` (seconds since 1970, as App Service answers).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsUnavailable`` for an answer without a token.
    package static func taking(from body: inout Data, issuer: String) throws -> BearerToken {
        defer { body.wipe() }
        guard let token = JSONSecretField.takeText("access_token", from: &body), token.count > 0 else {
            throw DBKeyError(.kmsUnavailable, "The token endpoint \(issuer) answered without an access_token.")
        }
        let fields = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        if let type = fields["token_type"] as? String, type.lowercased() != "bearer" {
            throw DBKeyError(.kmsUnavailable, "The token endpoint \(issuer) answered with a \(type) token, not Bearer.")
        }
        func seconds(_ name: String) -> Int? {
            (fields[name] as? Int) ?? (fields[name] as? String).flatMap { Int($0) }
        }
        let lifetime: Int
        if let expiresIn = seconds("expires_in") {
            lifetime = expiresIn
        } else if let expiresOn = seconds("expires_on") {
            lifetime = expiresOn - Int(Date().timeIntervalSince1970)
        } else {
            lifetime = 300
        }
        guard lifetime > 0 else {
            throw DBKeyError(.kmsUnavailable, "The token endpoint \(issuer) answered with a token that has expired.")
        }
        return BearerToken(value: token, lifetime: .seconds(lifetime))
    }
}

/// The error a refused token request means, for every OAuth 2.0 token endpoint the providers
/// ask (Google's, Entra's, a metadata or managed-identity endpoint, STS, IAM Credentials).
package enum TokenRequestError {
    /// - Parameters:
    ///   - what: The credential that asked, for the message (never a secret).
    ///   - advice: What to check when the endpoint refused it.
    /// - Returns: `kms-unavailable` for no answer, 429 and 5xx; `kms-access-denied` otherwise,
    ///   with the endpoint's `error`, `error_description` and `message` (or `error.message`).
    package static func error(status: Int, body: Data, what: String, advice: String) -> DBKeyError {
        let object = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        let detail = [
            object["error"] as? String, object["error_description"] as? String, object["message"] as? String,
            (object["error"] as? [String: Any])?["message"] as? String,
        ].compactMap { $0 }.joined(separator: ": ")
        let message = "The token request for \(what) failed with HTTP \(status)\(detail.isEmpty ? "" : ": \(detail)")"
        if status >= 500 || status == 429 || status == 0 {
            return DBKeyError(.kmsUnavailable, "\(message). Try again later.")
        }
        return DBKeyError(.kmsAccessDenied, "\(message). \(advice)")
    }
}

/// Bearer tokens kept per scope until they are due for refresh, each fetched once however many
/// requests wait for it.
package actor BearerTokenCache {
    private var tokens: [String: BearerToken] = [:]
    private var pending: [String: Task<BearerToken, any Error>] = [:]

    package init() {}

    /// The cached token for `scope`, or a new one from `fetch` when there is none or it is due.
    package func token(
        scope: String,
        fetch: @escaping @Sendable () async throws -> BearerToken
    ) async throws -> BearerToken {
        if let token = tokens[scope], ContinuousClock.now < token.refreshAt { return token }
        if let task = pending[scope] { return try await task.value }
        let task = Task { try await fetch() }
        pending[scope] = task
        defer { pending[scope] = nil }
        let token = try await task.value
        tokens[scope] = token
        return token
    }

    /// Forgets the token for `scope` (the service refused it).
    package func invalidate(scope: String) {
        tokens[scope] = nil
    }
}

/// An `application/x-www-form-urlencoded` body, built in secure memory because it carries a
/// credential (a client secret, a signed assertion).
package enum FormBody {
    /// A field's value.
    package enum Value {
        case text(String)
        case secret(SecureBuffer)
    }

    /// The encoded fields, in order.
    package static func encode(_ fields: [(name: String, value: Value)]) -> SecureBuffer {
        func encodedCount(_ bytes: UnsafeRawBufferPointer) -> Int {
            bytes.reduce(0) { $0 + (isUnreserved($1) ? 1 : 3) }
        }
        func withBytes<R>(_ value: Value, _ body: (UnsafeRawBufferPointer) -> R) -> R {
            switch value {
            case .text(let text): Array(text.utf8).withUnsafeBytes(body)
            case .secret(let secret): secret.withUnsafeBytes(body)
            }
        }
        let total = fields.enumerated().reduce(0) { sum, field in
            sum + (field.offset > 0 ? 1 : 0) + field.element.name.utf8.count + 1
                + withBytes(field.element.value, encodedCount)
        }
        return SecureBuffer(count: total) { output in
            var index = 0
            func put(_ byte: UInt8) {
                output[index] = byte
                index += 1
            }
            let hex = Array("0123456789ABCDEF".utf8)
            for (offset, field) in fields.enumerated() {
                if offset > 0 { put(UInt8(ascii: "&")) }
                for byte in field.name.utf8 { put(byte) }
                put(UInt8(ascii: "="))
                withBytes(field.value) { bytes in
                    for byte in bytes {
                        if isUnreserved(byte) {
                            put(byte)
                        } else {
                            put(UInt8(ascii: "%"))
                            put(hex[Int(byte >> 4)])
                            put(hex[Int(byte & 0x0F)])
                        }
                    }
                }
            }
        }
    }

    /// RFC 3986's unreserved characters: letters, digits, `-`, `.`, `_`, `~`.
    private static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
            UInt8(ascii: "~"):
            true
        default: false
        }
    }
}

extension KmsHTTPClient {
    /// Sends one operation (a GET when `body` is `nil`, else a JSON POST) with a bearer token
    /// for `scope` from `tokens`, fetched with `fetch` when there is none or it is due, and
    /// returns the body of its `200` answer.
    ///
    /// A token the service refuses with `401` (it expired on the way, or was revoked) is
    /// forgotten and the operation sent once more with a new one, as Google's and Azure's
    /// clients do; a second `401` is the caller's error.
    package func sendAuthorized(
        _ operation: String,
        url: URL,
        body: Body?,
        tokens: BearerTokenCache,
        scope: String,
        fetch: @escaping @Sendable () async throws -> BearerToken,
        headers extra: [(name: String, value: String)] = [],
        mapError: (_ status: Int, _ body: Data) -> DBKeyError
    ) async throws -> Data {
        var refusals = 0
        while true {
            let token = try await tokens.token(scope: scope, fetch: fetch)
            var refused = false
            do {
                return try await send(
                    operation, method: body == nil ? "GET" : "POST", url: url, body: body ?? .none,
                    headers: { _ in
                        [("Authorization", token.authorization)] + extra
                            + (body == nil ? [] : [("Content-Type", "application/json")])
                    },
                    mapError: { status, responseBody in
                        refused = status == 401
                        return mapError(status, responseBody)
                    })
            } catch let error as DBKeyError where refused {
                await tokens.invalidate(scope: scope)
                refusals += 1
                if refusals == 2 { throw error }
            }
        }
    }
}
