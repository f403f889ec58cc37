import Crypto
import Foundation
import KmsHTTP
import Logging
import SQLCipherKeyManager

/// A profile that takes a role's credentials from IAM Identity Center (AWS SSO), signed in by
/// `aws sso login`, as botocore's `SSOProvider` does.
///
/// The token `aws sso login` leaves in `~/.aws/sso/cache/` is sent to the portal's
/// `GetRoleCredentials`. A profile that names an `sso-session` has its token refreshed, when it
/// is within 15 minutes of expiring, with the refresh token and client registration beside it
/// (the OIDC service's `CreateToken`), and the refreshed token written back for the AWS CLI and
/// the SDKs; a legacy profile (`sso_start_url` in the profile itself) is never refreshed.
struct SSOProfile: Sendable {
    let profile: String
    let startURL: String
    let region: String
    let accountId: String
    let roleName: String
    /// The `sso-session` the profile names; `nil` for a legacy profile.
    let session: String?
    /// The token cache file: `~/.aws/sso/cache/`, the SHA-1 of the session's name (or of the
    /// start URL, for a legacy profile) in hex, `.json`.
    let tokenCache: String
    /// The portal (`GetRoleCredentials`) and the OIDC service (`CreateToken`).
    let portal: URL
    let oidc: URL

    static let refreshWindow: TimeInterval = 15 * 60

    /// The command that signs in again.
    var loginAdvice: String {
        session.map { "aws sso login --sso-session \($0)" } ?? "aws sso login --profile \(profile)"
    }

    var summary: String { "the IAM Identity Center role \(roleName) in \(accountId) (profile \"\(profile)\")" }

    static func tokenCachePath(home: String, session: String?, startURL: String) -> String {
        let digest = Insecure.SHA1.hash(data: Data((session ?? startURL).utf8))
        return home + "/.aws/sso/cache/" + digest.map { String(format: "%02x", $0) }.joined() + ".json"
    }

    /// The role's credentials, with their expiry.
    func credentials(_ client: KmsHTTPClient) async throws -> (AWSCredentials, Date) {
        let token = try await accessToken(client)
        var components = URLComponents(
            url: portal.appendingPathComponent("federation/credentials"), resolvingAgainstBaseURL: false)
        components?.queryItems = [
            URLQueryItem(name: "role_name", value: roleName), URLQueryItem(name: "account_id", value: accountId),
        ]
        guard let url = components?.url else {
            throw DBKeyError(.invalidConfiguration, "The IAM Identity Center portal \(portal) is not a URL.")
        }
        var body = try await client.send(
            "GetRoleCredentials", method: "GET", url: url, body: .none,
            headers: { _ in
                [("x-amz-sso_bearer_token", token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) })]
            },
            mapError: { status, _ in
                switch status {
                case 401:
                    DBKeyError(
                        .kmsAccessDenied,
                        "IAM Identity Center refused the sign-in of the AWS profile \"\(profile)\" (HTTP 401: it has expired or was revoked). Sign in again: \(loginAdvice)."
                    )
                case 403, 404:
                    DBKeyError(
                        .kmsAccessDenied,
                        "IAM Identity Center does not give the AWS profile \"\(profile)\"'s sign-in the role \(roleName) in the account \(accountId) (HTTP \(status)). Check the permission sets assigned to the user."
                    )
                default:
                    DBKeyError(
                        status >= 500 || status == 429 ? .kmsUnavailable : .kmsAccessDenied,
                        "IAM Identity Center answered HTTP \(status) to GetRoleCredentials for \(roleName) in \(accountId)."
                    )
                }
            })
        defer { body.wipe() }
        guard let secret = JSONSecretField.takeText("secretAccessKey", from: &body), secret.count > 0,
            let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let role = object["roleCredentials"] as? [String: Any], let id = role["accessKeyId"] as? String,
            let sessionToken = role["sessionToken"] as? String
        else {
            throw DBKeyError(.kmsAccessDenied, "IAM Identity Center answered GetRoleCredentials without credentials.")
        }
        let expires = (role["expiration"] as? NSNumber).map { Date(timeIntervalSince1970: $0.doubleValue / 1000) }
        return (
            AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: sessionToken),
            expires ?? Date(timeIntervalSinceNow: 3600)
        )
    }

    /// The cached access token: refreshed first when it is within 15 minutes of expiring and can
    /// be; while it has not expired, used even if the refresh failed.
    func accessToken(_ client: KmsHTTPClient) async throws -> SecureBuffer {
        guard let token = try SSOToken.read(tokenCache) else {
            throw DBKeyError(
                .kmsAccessDenied,
                "The AWS profile \"\(profile)\" signs in with IAM Identity Center, and there is no sign-in at \(tokenCache). Sign in: \(loginAdvice)."
            )
        }
        guard token.expiresAt.timeIntervalSinceNow < SSOProfile.refreshWindow, session != nil,
            let refresh = token.refresh
        else { return try usable(token, refreshFailure: nil) }
        let fresh: SSOToken
        do {
            fresh = try await refreshed(token, refresh, client)
        } catch let error as DBKeyError {
            // Another process may have refreshed it first, spending the refresh token.
            if let other = try SSOToken.read(tokenCache), other.expiresAt > token.expiresAt {
                return try usable(other, refreshFailure: error)
            }
            return try usable(token, refreshFailure: error)
        }
        do {
            try fresh.write(to: tokenCache)
        } catch {
            client.logger.warning(
                "The refreshed IAM Identity Center token could not be written back to the cache; this process uses it, and the next may have to sign in again.",
                metadata: ["profile": .string(profile), "path": .string(tokenCache), "error": .string("\(error)")])
        }
        return fresh.accessToken
    }

    private func usable(_ token: SSOToken, refreshFailure: DBKeyError?) throws -> SecureBuffer {
        guard token.expiresAt.timeIntervalSinceNow > 0 else {
            // An OIDC service that did not answer is an outage: trying again later may do.
            throw DBKeyError(
                refreshFailure?.code == .kmsUnavailable ? .kmsUnavailable : .kmsAccessDenied,
                "The IAM Identity Center sign-in of the AWS profile \"\(profile)\" expired at \(SSOToken.format(token.expiresAt))\(refreshFailure.map { " and could not be refreshed (\($0.message))" } ?? ""). Sign in again: \(loginAdvice).",
                underlying: refreshFailure)
        }
        return token.accessToken
    }

    /// OIDC `CreateToken` with the refresh token; the new token keeps the entry's other fields,
    /// and the refresh token it was given when the service sends none.
    private func refreshed(_ token: SSOToken, _ refresh: SSOToken.Refresh, _ client: KmsHTTPClient) async throws
        -> SSOToken
    {
        let request = try JSONSecretField.object(
            ["clientId": refresh.clientId, "grantType": "refresh_token"],
            secrets: [("clientSecret", refresh.clientSecret), ("refreshToken", refresh.refreshToken)])
        var body = try await client.send(
            "CreateToken", method: "POST", url: oidc.appendingPathComponent("token"), body: .secret(request),
            headers: { _ in [("Content-Type", "application/json")] },
            mapError: { status, body in
                let code =
                    ((try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["error"] as? String)
                    .map { " \($0)" } ?? ""
                return DBKeyError(
                    status >= 500 || status == 429 ? .kmsUnavailable : .kmsAccessDenied,
                    "IAM Identity Center's OIDC service answered HTTP \(status)\(code) to the refresh of the sso-session \(session ?? "")"
                )
            })
        defer { body.wipe() }
        guard let accessToken = JSONSecretField.takeText("accessToken", from: &body), accessToken.count > 0 else {
            throw DBKeyError(.kmsAccessDenied, "IAM Identity Center's OIDC service answered without an access token")
        }
        let refreshToken = JSONSecretField.takeText("refreshToken", from: &body)
        let fields = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        guard let lifetime = (fields["expiresIn"] as? NSNumber)?.doubleValue, lifetime > 0 else {
            throw DBKeyError(.kmsAccessDenied, "IAM Identity Center's OIDC service answered without expiresIn")
        }
        return SSOToken(
            accessToken: accessToken, expiresAt: Date(timeIntervalSinceNow: lifetime),
            refreshToken: refreshToken ?? refresh.refreshToken, clientSecret: refresh.clientSecret,
            fields: token.fields)
    }
}

/// An entry of the SSO token cache, as `aws sso login` writes it (`accessToken`, `expiresAt`,
/// and for an `sso-session` `refreshToken`, `clientId`, `clientSecret`,
/// `registrationExpiresAt`): the secrets in secure memory, the other fields kept as written.
struct SSOToken {
    let accessToken: SecureBuffer
    let expiresAt: Date
    let refreshToken: SecureBuffer?
    let clientSecret: SecureBuffer?
    /// The fields that are not secret and not `expiresAt`.
    let fields: [String: Any]

    /// What a refresh needs; `nil` when a field is missing or the registration has expired.
    struct Refresh {
        let refreshToken: SecureBuffer
        let clientId: String
        let clientSecret: SecureBuffer
    }

    var refresh: Refresh? {
        guard let refreshToken, let clientSecret, let clientId = fields["clientId"] as? String,
            let registration = (fields["registrationExpiresAt"] as? String).flatMap(SSOToken.parseDate),
            registration.timeIntervalSinceNow > 0
        else { return nil }
        return Refresh(refreshToken: refreshToken, clientId: clientId, clientSecret: clientSecret)
    }

    private static let secretFields = ["accessToken", "refreshToken", "clientSecret"]

    /// The entry at `path`, or `nil` when there is none. The file gets the key-file checks: the
    /// AWS CLI writes it 0600, and it holds a refresh token.
    static func read(_ path: String) throws -> SSOToken? {
        let contents: SecureBuffer
        do {
            contents = try ProtectedFile.read(
                at: path, maxSize: 64 * 1024, kind: "AWS SSO token cache", missingCode: .keyFileMissing)
        } catch DBKeyError.Code.keyFileMissing {
            return nil
        }
        var body = contents.withUnsafeBytes { Data($0) }
        defer { body.wipe() }
        let accessToken = JSONSecretField.takeText("accessToken", from: &body)
        let refreshToken = JSONSecretField.takeText("refreshToken", from: &body)
        let clientSecret = JSONSecretField.takeText("clientSecret", from: &body)
        guard let accessToken, accessToken.count > 0,
            var fields = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let expiresAt = (fields["expiresAt"] as? String).flatMap(parseDate)
        else {
            throw DBKeyError(
                .kmsAccessDenied,
                "The AWS SSO token cache \(path) has no accessToken or expiresAt; sign in again with aws sso login.")
        }
        for name in secretFields + ["expiresAt"] { fields[name] = nil }
        return SSOToken(
            accessToken: accessToken, expiresAt: expiresAt, refreshToken: refreshToken, clientSecret: clientSecret,
            fields: fields)
    }

    /// Replaces the entry at `path`, atomically, mode 0600.
    func write(to path: String) throws {
        var plain = fields
        plain["expiresAt"] = SSOToken.format(expiresAt)
        let secrets = [("accessToken", accessToken), ("refreshToken", refreshToken), ("clientSecret", clientSecret)]
            .compactMap { name, value in value.map { (name: name, value: $0) } }
        let contents = try JSONSecretField.object(plain, secrets: secrets)
        try contents.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path) }
    }

    /// `expiresAt` as the AWS CLI v2 and botocore write it (`…Z`), v1's `…UTC`, or with an
    /// offset or fractional seconds.
    static func parseDate(_ text: String) -> Date? {
        TemporaryCredentials.parseDate(text.hasSuffix("UTC") ? String(text.dropLast(3)) + "Z" : text)
    }

    static func format(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: date)
    }
}
