import Crypto
import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// An HTTP request as AWS Signature Version 4 sees it.
struct SigV4Request: Sendable {
    var method: String
    /// The path, not percent-encoded (`/`, `/example space/`).
    var path: String
    /// The query string as sent, without `?` (may be empty).
    var query: String
    /// Header fields in order; a name may repeat.
    var headers: [(name: String, value: String)]
    var body: [UInt8]
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`), written from AWS's specification and checked
/// against its published test suite.
///
/// The secret access key is used only inside a ``SecureBuffer``; the signature and the
/// `Authorization` header reveal nothing about it.
struct SigV4Signer: Sendable {
    let service: String
    let region: String

    static let algorithm = "AWS4-HMAC-SHA256"

    /// The request with `X-Amz-Date`, the session token (signed) and `Authorization` added.
    func sign(_ request: SigV4Request, credentials: AWSCredentials, date: Date) -> SigV4Request {
        var signed = request
        let timestamp = SigV4Signer.timestamp(date)
        if !signed.headers.contains(where: { $0.name.lowercased() == "x-amz-date" }) {
            signed.headers.append((name: "X-Amz-Date", value: timestamp))
        }
        if let token = credentials.sessionToken {
            signed.headers.append((name: "X-Amz-Security-Token", value: token))
        }
        signed.headers.append(
            (name: "Authorization", value: authorization(for: signed, credentials: credentials, timestamp: timestamp)))
        return signed
    }

    /// The `Authorization` header value for a request whose headers are final.
    func authorization(for request: SigV4Request, credentials: AWSCredentials, timestamp: String) -> String {
        let scope = credentialScope(timestamp)
        let signature = self.signature(
            stringToSign: stringToSign(request, timestamp: timestamp), secret: credentials.secretAccessKey,
            timestamp: timestamp)
        return
            "\(SigV4Signer.algorithm) Credential=\(credentials.accessKeyId)/\(scope), SignedHeaders=\(signedHeaders(request)), Signature=\(signature)"
    }

    func credentialScope(_ timestamp: String) -> String {
        "\(timestamp.prefix(8))/\(region)/\(service)/aws4_request"
    }

    func canonicalRequest(_ request: SigV4Request) -> String {
        [
            request.method,
            SigV4Signer.canonicalPath(request.path),
            SigV4Signer.canonicalQuery(request.query),
            canonicalHeaders(request).map { "\($0.name):\($0.value)\n" }.joined(),
            signedHeaders(request),
            SHA256.hash(data: request.body).lowercaseHex,
        ].joined(separator: "\n")
    }

    func stringToSign(_ request: SigV4Request, timestamp: String) -> String {
        [
            SigV4Signer.algorithm,
            timestamp,
            credentialScope(timestamp),
            SHA256.hash(data: Array(canonicalRequest(request).utf8)).lowercaseHex,
        ].joined(separator: "\n")
    }

    /// HMAC chain from `"AWS4" + secret` through date, region, service and `aws4_request`.
    func signature(stringToSign: String, secret: SecureBuffer, timestamp: String) -> String {
        let prefixed = secret.withUnsafeBytes { secretBytes in
            SecureBuffer(count: 4 + secretBytes.count) { buffer in
                buffer.copyBytes(from: Array("AWS4".utf8))
                UnsafeMutableRawBufferPointer(rebasing: buffer[4...]).copyMemory(from: secretBytes)
            }
        }
        var key = prefixed.withUnsafeBytes { SymmetricKey(data: $0) }
        for part in [String(timestamp.prefix(8)), region, service, "aws4_request"] {
            key = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key))
        }
        return HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key).lowercaseHex
    }

    private func canonicalHeaders(_ request: SigV4Request) -> [(name: String, value: String)] {
        var merged: [String: [String]] = [:]
        for header in request.headers where header.name.lowercased() != "authorization" {
            merged[header.name.lowercased(), default: []].append(SigV4Signer.trimmed(header.value))
        }
        return merged.keys.sorted().map { (name: $0, value: merged[$0]!.joined(separator: ",")) }
    }

    private func signedHeaders(_ request: SigV4Request) -> String {
        canonicalHeaders(request).map(\.name).joined(separator: ";")
    }

    /// Trims and collapses runs of spaces, as the specification asks.
    static func trimmed(_ value: String) -> String {
        value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            .trimmingCharacters(in: .whitespaces)
    }

    /// The path with dot segments and empty segments removed, each segment percent-encoded.
    static func canonicalPath(_ path: String) -> String {
        var segments: [Substring] = []
        for segment in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch segment {
            case ".": continue
            case "..": _ = segments.popLast()
            default: segments.append(segment)
            }
        }
        let trailingSlash = path.hasSuffix("/") && !segments.isEmpty
        return "/" + segments.map { uriEncode(String($0)) }.joined(separator: "/") + (trailingSlash ? "/" : "")
    }

    /// Parameters encoded and sorted by name, then value.
    static func canonicalQuery(_ query: String) -> String {
        guard !query.isEmpty else { return "" }
        let pairs = query.split(separator: "&", omittingEmptySubsequences: true).map { parameter -> (String, String) in
            let parts = parameter.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (uriEncode(String(parts[0])), parts.count > 1 ? uriEncode(String(parts[1])) : "")
        }
        return pairs.sorted { $0.0 == $1.0 ? $0.1 < $1.1 : $0.0 < $1.0 }.map { "\($0.0)=\($0.1)" }.joined(
            separator: "&")
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters, in uppercase hex.
    static func uriEncode(_ text: String) -> String {
        var encoded = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."),
                UInt8(ascii: "~"):
                encoded.append(Character(UnicodeScalar(byte)))
            default:
                encoded += String(format: "%%%02X", byte)
            }
        }
        return encoded
    }

    static func timestamp(_ date: Date) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return formatter.string(from: date)
    }

}
