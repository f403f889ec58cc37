import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// Where AWS credentials come from, in the order botocore resolves them, and the temporary
/// ones refreshed before they expire.
///
/// The order: the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`); a profile that assumes a role (`role_arn` with `source_profile` — whose
/// own credentials are found the same way, another role among them — or `credential_source`:
/// `Environment`, `Ec2InstanceMetadata`, `EcsContainer`) through STS `AssumeRole`, with its
/// `external_id`, `duration_seconds` and `role_session_name` (a profile with `mfa_serial` is
/// refused: DBKey cannot ask for a code); web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, or the
/// profile's `web_identity_token_file` and `role_arn`) through STS `AssumeRoleWithWebIdentity`;
/// IAM Identity Center (`sso_account_id` and `sso_role_name`, with an `sso-session` or a legacy
/// `sso_start_url`: the token `aws sso login` cached, refreshed as botocore does, see
/// `SSOProfile`); the shared credentials file; the profile's `credential_process`; the config file's keys; the
/// ECS/EKS container endpoint (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or `_FULL_URI` to a
/// loopback or the documented container hosts, with `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`);
/// EC2 instance metadata with IMDSv2 session tokens (`AWS_EC2_METADATA_DISABLED`,
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`), 1 s and one attempt, as botocore's defaults.
public final class AWSCredentialProvider: Sendable {
    enum Source: Sendable {
        case fixed(AWSCredentials)
        case webIdentity(tokenFile: String, roleArn: String, sessionName: String, endpoint: URL)
        case assumeRole(AssumedRole)
        case sso(SSOProfile)
        case process(command: String)
        case container(url: URL, authorization: Authorization?)
        case instanceMetadata(endpoint: URL)
    }

    /// A role a profile assumes with another source's credentials.
    struct AssumedRole: Sendable {
        let roleArn: String
        let sessionName: String
        let externalId: String?
        let durationSeconds: Int?
        /// The credentials that call `AssumeRole`.
        let source: AWSCredentialProvider
        let endpoint: URL
        /// The region STS requests are signed for.
        let region: String
    }

    /// The container endpoint's `Authorization` value: given, or read from a file at each
    /// refresh (EKS Pod Identity rotates it).
    enum Authorization: Sendable {
        case token(SecureBuffer)
        case file(String)
    }

    let source: Source
    private let cache = RefreshingCredentials()

    init(source: Source) {
        self.source = source
    }

    /// Credentials that never change.
    public convenience init(_ credentials: AWSCredentials) {
        self.init(source: .fixed(credentials))
    }

    /// A description of the source, with no secret: for messages.
    public var summary: String {
        switch source {
        case .fixed(let credentials): "the access key \(credentials.accessKeyId)"
        case .webIdentity(_, let role, _, _): "the web identity for \(role)"
        case .assumeRole(let role): "the role \(role.roleArn), assumed with \(role.source.summary)"
        case .sso(let profile): profile.summary
        case .process: "the profile's credential_process"
        case .container(let url, _): "the container credentials endpoint \(url.host ?? "?")"
        case .instanceMetadata(let endpoint): "the EC2 instance role (IMDS at \(endpoint.host ?? "?"))"
        }
    }

    /// Credentials now: the cached ones while they are good for 15 more minutes (botocore's
    /// advisory refresh), else new ones.
    func current(_ client: KmsHTTPClient) async throws -> AWSCredentials {
        if case .fixed(let credentials) = source { return credentials }
        return try await cache.current { [self] in try await self.fetch(client) }
    }

    /// New temporary credentials from the source, with their expiry.
    private func fetch(_ client: KmsHTTPClient) async throws -> (AWSCredentials, Date) {
        switch source {
        case .fixed(let credentials):
            return (credentials, .distantFuture)
        case .webIdentity(let tokenFile, let roleArn, let sessionName, let endpoint):
            let token = try TokenFile.read(tokenFile, what: "web identity token file")
            let form = FormBody.encode([
                ("Action", .text("AssumeRoleWithWebIdentity")), ("Version", .text("2011-06-15")),
                ("RoleArn", .text(roleArn)), ("RoleSessionName", .text(sessionName)),
                ("WebIdentityToken", .secret(token)),
            ])
            var body = try await client.send(
                "AssumeRoleWithWebIdentity", method: "POST", url: endpoint, body: .secret(form),
                headers: { _ in [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")] },
                mapError: { status, body in
                    AWSCredentialProvider.stsError(
                        status: status, body: body, action: "AssumeRoleWithWebIdentity", role: roleArn,
                        advice: "Check the role's trust policy and the web identity token file.")
                })
            return try TemporaryCredentials.fromSTS(&body, action: "AssumeRoleWithWebIdentity")
        case .assumeRole(let role):
            return try await assume(role, client)
        case .sso(let profile):
            return try await profile.credentials(client)
        case .process(let command):
            var output = try await CredentialProcess.run(command)
            return try TemporaryCredentials.fromJSON(&output, tokenField: "SessionToken", what: "credential_process")
        case .container(let url, let authorization):
            var headers: [(name: String, value: String)] = []
            switch authorization {
            case .token(let token)?:
                headers.append(("Authorization", token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }))
            case .file(let path)?:
                let token = try TokenFile.read(path, what: "container authorization token file")
                headers.append(("Authorization", token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }))
            case nil: break
            }
            var body = try await client.send(
                "container credentials", method: "GET", url: url, body: .none, headers: { _ in headers },
                mapError: { status, _ in
                    DBKeyError(
                        status >= 500 ? .kmsUnavailable : .kmsAccessDenied,
                        "The container credentials endpoint answered HTTP \(status).")
                })
            return try TemporaryCredentials.fromJSON(&body, tokenField: "Token", what: "the container endpoint")
        case .instanceMetadata(let endpoint):
            return try await InstanceMetadata(endpoint: endpoint, client: client.probing()).credentials()
        }
    }

    /// STS `AssumeRole`, signed with the source's credentials.
    private func assume(_ role: AssumedRole, _ client: KmsHTTPClient) async throws -> (AWSCredentials, Date) {
        let credentials = try await role.source.current(client)
        var fields: [(name: String, value: FormBody.Value)] = [
            ("Action", .text("AssumeRole")), ("Version", .text("2011-06-15")), ("RoleArn", .text(role.roleArn)),
            ("RoleSessionName", .text(role.sessionName)),
        ]
        if let externalId = role.externalId { fields.append(("ExternalId", .text(externalId))) }
        if let duration = role.durationSeconds { fields.append(("DurationSeconds", .text(String(duration)))) }
        let signer = SigV4Signer(service: "sts", region: role.region)
        let endpoint = role.endpoint
        var body = try await client.send(
            "AssumeRole", method: "POST", url: endpoint, body: .secret(FormBody.encode(fields)),
            headers: { payload in
                signer.sign(
                    SigV4Request(
                        method: "POST", path: endpoint.path.isEmpty ? "/" : endpoint.path, query: "",
                        headers: [
                            (name: "Host", value: AWSKms.hostHeader(endpoint)),
                            (name: "Content-Type", value: "application/x-www-form-urlencoded; charset=utf-8"),
                        ],
                        body: Array(payload)),
                    credentials: credentials, date: Date()
                ).headers
            },
            mapError: { status, body in
                AWSCredentialProvider.stsError(
                    status: status, body: body, action: "AssumeRole", role: role.roleArn,
                    advice:
                        "Check the role's trust policy (it must trust \(role.source.summary))\(role.externalId == nil ? "" : " and the external_id")."
                )
            })
        return try TemporaryCredentials.fromSTS(&body, action: "AssumeRole")
    }

    static func stsError(status: Int, body: Data, action: String, role: String, advice: String) -> DBKeyError {
        let text = String(decoding: body, as: UTF8.self)
        let code = TemporaryCredentials.element("Code", in: text) ?? ""
        let message = TemporaryCredentials.element("Message", in: text) ?? ""
        let what = "STS \(action) for \(role) failed with HTTP \(status) \(code): \(message)"
        if status >= 500 || status == 429 || code == "IDPCommunicationError" || code == "Throttling" {
            let error = DBKeyError(.kmsUnavailable, "\(what). Try again later.")
            return code == "Throttling" || status == 429 ? error.throttled(retryAfter: nil) : error
        }
        return DBKeyError(.kmsAccessDenied, "\(what). \(advice)")
    }
}

/// Temporary credentials cached until they are due: refreshed 15 minutes before they expire.
private actor RefreshingCredentials {
    private var cached: (credentials: AWSCredentials, expires: Date)?
    private var pending: Task<(AWSCredentials, Date), any Error>?

    func current(_ fetch: @escaping @Sendable () async throws -> (AWSCredentials, Date)) async throws
        -> AWSCredentials
    {
        if let cached, cached.expires.timeIntervalSinceNow > 15 * 60 { return cached.credentials }
        if let pending { return try await pending.value.0 }
        let task = Task { try await fetch() }
        pending = task
        defer { pending = nil }
        let (credentials, expires) = try await task.value
        cached = (credentials, expires)
        return credentials
    }
}

/// Parsing of the answers temporary credentials come in, the secret key straight into secure
/// memory.
enum TemporaryCredentials {
    /// `AccessKeyId`, `SecretAccessKey`, `Token` or `SessionToken`, `Expiration` (ISO 8601) in a
    /// JSON object (container endpoint, IMDS, credential_process).
    static func fromJSON(_ body: inout Data, tokenField: String, what: String) throws -> (AWSCredentials, Date) {
        defer { body.wipe() }
        guard let secret = JSONSecretField.takeText("SecretAccessKey", from: &body), secret.count > 0,
            let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
            let id = object["AccessKeyId"] as? String
        else {
            throw DBKeyError(.kmsAccessDenied, "The credentials from \(what) have no AccessKeyId or SecretAccessKey.")
        }
        let expires = (object["Expiration"] as? String).flatMap(parseDate) ?? .distantFuture
        return (
            AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: object[tokenField] as? String),
            expires
        )
    }

    /// STS's XML answer: `<Credentials>` with `AccessKeyId`, `SecretAccessKey`, `SessionToken`,
    /// `Expiration`.
    static func fromSTS(_ body: inout Data, action: String) throws -> (AWSCredentials, Date) {
        defer { body.wipe() }
        let secret: SecureBuffer? = body.withUnsafeMutableBytes { bytes in
            let open = Array("<SecretAccessKey>".utf8)
            let close = Array("</SecretAccessKey>".utf8)
            guard let start = bytes.firstRange(of: open)?.upperBound,
                let end = bytes[start...].firstRange(of: close)?.lowerBound
            else { return nil }
            let value = SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            for index in start..<end { bytes[index] = UInt8(ascii: "A") }
            return value
        }
        let text = String(decoding: body, as: UTF8.self)
        guard let secret, secret.count > 0, let id = element("AccessKeyId", in: text),
            let token = element("SessionToken", in: text)
        else {
            throw DBKeyError(.kmsAccessDenied, "STS answered \(action) without credentials.")
        }
        let expires = element("Expiration", in: text).flatMap(parseDate) ?? Date(timeIntervalSinceNow: 3600)
        return (AWSCredentials(accessKeyId: id, secretAccessKey: secret, sessionToken: token), expires)
    }

    /// The text of the first `<name>…</name>` element.
    static func element(_ name: String, in text: String) -> String? {
        guard let start = text.range(of: "<\(name)>")?.upperBound,
            let end = text.range(of: "</\(name)>", range: start..<text.endIndex)?.lowerBound
        else { return nil }
        return String(text[start..<end])
    }

    static func parseDate(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.date(from: text)
    }
}
