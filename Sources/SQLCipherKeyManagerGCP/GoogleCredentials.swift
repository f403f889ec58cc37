import Crypto
import _CryptoExtras
import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// Where ``GoogleCloudKms`` gets its OAuth 2.0 access tokens, found as Google's client libraries find
/// Application Default Credentials.
///
/// In order: an access token in `GOOGLE_OAUTH_ACCESS_TOKEN` (as Terraform's Google provider
/// reads it); the credential file named by `GOOGLE_APPLICATION_CREDENTIALS`; gcloud's
/// application-default file (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`,
/// `application_default_credentials.json`); the metadata server of Compute Engine, GKE, Cloud
/// Run and Cloud Functions (`GCE_METADATA_HOST`, default `metadata.google.internal`).
///
/// A credential file is one of the kinds Google's client libraries read
/// (``credentialFile(_:)``): a service account's key, a user's refresh token
/// (`authorized_user`, what `gcloud auth application-default login` writes), a service account
/// impersonated with one of those (`impersonated_service_account`), or workload identity
/// federation (`external_account`: a subject token from a file or a URL, exchanged at STS, then
/// optionally an impersonated service account).
///
/// A service-account key never leaves secure memory but to be parsed by swift-crypto for one
/// signature: DBKey signs an RS256 JWT with it and exchanges that at the key file's
/// `token_uri`. Files that hold a secret must be readable by their owner only, as DBKey's own
/// key files are; a workload identity configuration, which holds none, may be readable by others
/// and a link (as Kubernetes mounts it).
public struct GoogleCredentials: Sendable {
    enum Source: Sendable {
        case accessToken(SecureBuffer)
        case serviceAccount(ServiceAccountKey)
        case authorizedUser(AuthorizedUser)
        indirect case impersonated(source: GoogleCredentials, url: URL, delegates: [String])
        case externalAccount(ExternalAccount)
        case metadataServer(URL)
    }

    let source: Source

    /// The project Cloud KMS bills and counts quota against instead of the credentials' own
    /// (`x-goog-user-project`): `GOOGLE_CLOUD_QUOTA_PROJECT`, else the credential file's
    /// `quota_project_id`, as Google's client libraries take it. User credentials need one.
    public let quotaProject: String?

    init(source: Source, quotaProject: String? = nil) {
        self.source = source
        self.quotaProject = quotaProject.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// These credentials, with `project` billed for their requests (`x-goog-user-project`).
    public func withQuotaProject(_ project: String?) -> GoogleCredentials {
        GoogleCredentials(source: source, quotaProject: project)
    }

    /// The OAuth scope DBKey asks for: Cloud KMS only.
    static let scope = "https://www.googleapis.com/auth/cloudkms"

    /// The scope STS's federated token is asked for, as Google's client libraries ask for it.
    static let platformScope = "https://www.googleapis.com/auth/cloud-platform"

    /// The scope of the credentials that impersonate a service account, as Google's client
    /// libraries ask for it.
    static let iamScope = "https://www.googleapis.com/auth/iam"

    /// Credentials from a fixed access token (refreshed by whoever issued it).
    public static func accessToken(_ token: SecureBuffer) -> GoogleCredentials {
        GoogleCredentials(source: .accessToken(token))
    }

    /// Credentials from a service-account JSON key file.
    ///
    /// - Throws: key-file codes for a file that is missing, too large or readable by others;
    ///   ``DBKeyError/Code-swift.struct/invalidConfiguration`` for one that is not a
    ///   service-account key.
    public static func serviceAccount(keyFile path: String) throws -> GoogleCredentials {
        let credentials = try credentialFile(path)
        guard case .serviceAccount = credentials.source else {
            throw DBKeyError(.invalidConfiguration, "\(path) is not a service-account key file (type service_account).")
        }
        return credentials
    }

    /// Credentials from an Application Default Credentials file of any kind Google's client
    /// libraries read: `service_account`, `authorized_user`, `impersonated_service_account` or
    /// `external_account`.
    ///
    /// - Throws: key-file codes for a file that is missing, too large, or holds a secret and is
    ///   readable by others; ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a kind or
    ///   a field DBKey does not read.
    public static func credentialFile(_ path: String) throws -> GoogleCredentials {
        try CredentialFile.read(path)
    }

    /// Finds credentials as described above.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a credential file of a
    ///   kind DBKey does not read, or an endpoint that is not https.
    public static func fromEnvironment(_ environment: ProviderEnvironment) throws -> GoogleCredentials {
        let found = try sourceFromEnvironment(environment)
        guard let project = environment["GOOGLE_CLOUD_QUOTA_PROJECT"], !project.isEmpty else { return found }
        return found.withQuotaProject(project)
    }

    private static func sourceFromEnvironment(_ environment: ProviderEnvironment) throws -> GoogleCredentials {
        if let token = environment["GOOGLE_OAUTH_ACCESS_TOKEN"], !token.isEmpty {
            return accessToken(try Passphrase.fromText(token, kind: "Google access token"))
        }
        if let path = environment["GOOGLE_APPLICATION_CREDENTIALS"], !path.isEmpty {
            return try credentialFile(path)
        }
        let configuration =
            environment["CLOUDSDK_CONFIG"] ?? environment["HOME"].map { $0 + "/.config/gcloud" } ?? "/nonexistent"
        let applicationDefault = configuration + "/application_default_credentials.json"
        if FileManager.default.fileExists(atPath: applicationDefault) {
            return try credentialFile(applicationDefault)
        }
        let host = environment["GCE_METADATA_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "metadata.google.internal"
        guard
            let url = URL(string: "http://\(host)/computeMetadata/v1/instance/service-accounts/default/token"),
            url.host != nil
        else {
            throw DBKeyError(.invalidConfiguration, "GCE_METADATA_HOST \"\(host)\" is not a host[:port].")
        }
        return GoogleCredentials(source: .metadataServer(url))
    }

    /// A description of the source, with no secret: for messages.
    var summary: String {
        switch source {
        case .accessToken: "the access token in GOOGLE_OAUTH_ACCESS_TOKEN"
        case .serviceAccount(let key): "the service account \(key.clientEmail)"
        case .authorizedUser(let user): "the user credentials of the OAuth client \(user.clientId)"
        case .impersonated(let source, let url, _):
            "the service account \(ImpersonationURL.account(in: url)), impersonated with \(source.summary)"
        case .externalAccount(let account): "workload identity federation with \(account.audience)"
        case .metadataServer(let url): "the metadata server at \(url.host ?? "?")"
        }
    }

    /// A new access token from the source, for `scope`.
    func fetchToken(_ client: KmsHTTPClient, scope: String = GoogleCredentials.scope) async throws -> BearerToken {
        switch source {
        case .accessToken(let token):
            // Nothing to refresh it with: it is used until the service refuses it.
            return BearerToken(value: token, lifetime: .seconds(3600))
        case .serviceAccount(let key):
            let assertion = try key.signedAssertion(scope: scope)
            return try await tokenRequest(
                key.tokenURI,
                [
                    ("grant_type", .text("urn:ietf:params:oauth:grant-type:jwt-bearer")),
                    ("assertion", .secret(assertion)),
                ],
                client)
        case .authorizedUser(let user):
            return try await tokenRequest(
                user.tokenURI,
                [
                    ("grant_type", .text("refresh_token")), ("client_id", .text(user.clientId)),
                    ("client_secret", .secret(user.clientSecret)), ("refresh_token", .secret(user.refreshToken)),
                ], client)
        case .impersonated(let source, let url, let delegates):
            let sourceToken = try await source.fetchToken(client, scope: GoogleCredentials.iamScope)
            return try await ImpersonationURL.accessToken(
                url, delegates: delegates, scope: scope, with: sourceToken, for: summary, client)
        case .externalAccount(let account):
            let federated = try await account.exchange(client, for: summary)
            guard let url = account.impersonationURL else { return federated }
            return try await ImpersonationURL.accessToken(
                url, delegates: [], scope: scope, with: federated, for: summary, client)
        case .metadataServer(let url):
            do {
                var body = try await client.probing().send(
                    "metadata token", method: "GET", url: url, body: .none,
                    headers: { _ in [("Metadata-Flavor", "Google")] },
                    mapError: { status, body in
                        GoogleCredentials.tokenError(status: status, body: body, what: "the metadata server")
                    })
                return try BearerToken.taking(from: &body, issuer: "the metadata server")
            } catch let error as DBKeyError where error.code == .kmsUnavailable {
                throw DBKeyError(
                    .kmsAccessDenied,
                    "No Google credentials: GOOGLE_OAUTH_ACCESS_TOKEN and GOOGLE_APPLICATION_CREDENTIALS are unset, there is no gcloud application-default credential file, and the metadata server at \(url.host ?? "?") did not answer (\(error.message)). Set GOOGLE_APPLICATION_CREDENTIALS to a credential file, or run on Google Cloud with a service account attached.",
                    underlying: error)
            }
        }
    }

    /// An OAuth 2.0 token request (form-encoded, in secure memory) to `url`.
    func tokenRequest(_ url: URL, _ fields: [(name: String, value: FormBody.Value)], _ client: KmsHTTPClient)
        async throws -> BearerToken
    {
        var body = try await client.send(
            "token", method: "POST", url: url, body: .secret(FormBody.encode(fields)),
            headers: { _ in [("Content-Type", "application/x-www-form-urlencoded")] },
            mapError: { status, body in GoogleCredentials.tokenError(status: status, body: body, what: summary) })
        return try BearerToken.taking(from: &body, issuer: url.absoluteString)
    }

    /// Maps a token endpoint's error (`{"error": "invalid_grant", "error_description": …}`, or
    /// Google's `{"error": {"message": …}}`).
    static func tokenError(status: Int, body: Data, what: String) -> DBKeyError {
        TokenRequestError.error(
            status: status, body: body, what: what,
            advice:
                "Check that the credentials are active (a key not deleted, a login not revoked, a workload identity provider's audience and conditions) and allowed to impersonate the account, if one is named."
        )
    }
}

/// An Application Default Credentials file, read once: its secrets (`private_key`,
/// `client_secret`, `refresh_token`) taken into secure memory and blanked before the JSON is
/// parsed.
enum CredentialFile {
    static let maximumSize = 65536

    static func read(_ path: String) throws -> GoogleCredentials {
        var body: Data
        do {
            let file = try ProtectedFile.read(
                at: path, maxSize: maximumSize, kind: "Google credential file", missingCode: .keyFileMissing)
            body = file.withUnsafeBytes { Data($0) }
        } catch let error as DBKeyError where error.code == .keyFileInsecure {
            // Only a workload identity configuration, which holds no secret, is read anyway.
            let file = try TokenFile.read(path, what: "Google credential file")
            body = file.withUnsafeBytes { Data($0) }
            var blanked = body
            defer { blanked.wipe() }
            for field in ["private_key", "client_secret", "refresh_token", "access_token"] {
                _ = JSONSecretField.takeText(field, from: &blanked)
            }
            guard
                (try? JSONSerialization.jsonObject(with: blanked) as? [String: Any])?["type"] as? String
                    == "external_account"
            else {
                body.wipe()
                throw error
            }
        }
        defer { body.wipe() }
        let privateKey = JSONSecretField.takeText("private_key", from: &body)
        let clientSecret = JSONSecretField.takeText("client_secret", from: &body)
        let refreshToken = JSONSecretField.takeText("refresh_token", from: &body)
        _ = JSONSecretField.takeText("access_token", from: &body)
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            throw DBKeyError(.invalidConfiguration, "\(path) is not JSON.")
        }
        func basic(_ object: [String: Any], _ what: String) throws -> GoogleCredentials.Source {
            switch object["type"] as? String {
            case "service_account":
                return .serviceAccount(try ServiceAccountKey(object, privateKey: privateKey, path: what))
            case "authorized_user":
                return .authorizedUser(
                    try AuthorizedUser(object, clientSecret: clientSecret, refreshToken: refreshToken, path: what))
            case let type:
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(what) is a \(type ?? "untyped") credential; DBKey reads service_account, authorized_user, impersonated_service_account and external_account files (for impersonation, a service_account or authorized_user source)."
                )
            }
        }
        return GoogleCredentials(
            source: try source(object, path: path, basic: basic), quotaProject: object["quota_project_id"] as? String)
    }

    private static func source(
        _ object: [String: Any], path: String, basic: ([String: Any], String) throws -> GoogleCredentials.Source
    ) throws -> GoogleCredentials.Source {
        switch object["type"] as? String {
        case "impersonated_service_account":
            guard let source = object["source_credentials"] as? [String: Any],
                let text = object["service_account_impersonation_url"] as? String
            else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(path) has no source_credentials or service_account_impersonation_url.")
            }
            let url = try EndpointURL.requiringTLS(text, what: "service_account_impersonation_url of \(path)")
            _ = try ImpersonationURL.account(checking: url, path: path)
            return .impersonated(
                source: GoogleCredentials(source: try basic(source, "The source_credentials of \(path)")), url: url,
                delegates: object["delegates"] as? [String] ?? [])
        case "external_account":
            return .externalAccount(try ExternalAccount(object, path: path))
        default:
            return try basic(object, path)
        }
    }
}

/// A user's refresh token and its OAuth client (`authorized_user`), as gcloud writes it.
struct AuthorizedUser: Sendable {
    let clientId: String
    let clientSecret: SecureBuffer
    let refreshToken: SecureBuffer
    let tokenURI: URL

    init(_ object: [String: Any], clientSecret: SecureBuffer?, refreshToken: SecureBuffer?, path: String) throws {
        guard let clientId = object["client_id"] as? String, let clientSecret, let refreshToken else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(path) lacks client_id, client_secret or refresh_token (an authorized_user file).")
        }
        self.clientId = clientId
        self.clientSecret = clientSecret
        self.refreshToken = refreshToken
        // gcloud writes no token_uri: Google's endpoint. One in the file is honoured (https, or a
        // loopback address for tests), as for a service account.
        tokenURI = try EndpointURL.requiringTLS(
            object["token_uri"] as? String ?? "https://oauth2.googleapis.com/token", what: "token_uri of \(path)")
    }
}

/// IAM Credentials' `generateAccessToken`, which gives a token of the service account its URL
/// names to a caller allowed to impersonate it.
enum ImpersonationURL {
    /// The account in `…/serviceAccounts/EMAIL:generateAccessToken`.
    static func account(in url: URL) -> String {
        let last = url.path.split(separator: "/").last.map(String.init) ?? ""
        return last.hasSuffix(":generateAccessToken") ? String(last.dropLast(":generateAccessToken".count)) : last
    }

    /// ``account(in:)``, checking that the URL is a `generateAccessToken` URL.
    static func account(checking url: URL, path: String) throws -> String {
        guard url.path.hasSuffix(":generateAccessToken"), url.path.contains("/serviceAccounts/") else {
            throw DBKeyError(
                .invalidConfiguration,
                "The service_account_impersonation_url of \(path) is not …/serviceAccounts/EMAIL:generateAccessToken.")
        }
        return account(in: url)
    }

    /// A token of the impersonated account for `scope`, asked for with `token`.
    static func accessToken(
        _ url: URL, delegates: [String], scope: String, with token: BearerToken, for what: String,
        _ client: KmsHTTPClient
    ) async throws -> BearerToken {
        var body = try await client.send(
            "generateAccessToken", method: "POST", url: url,
            body: .json(["delegates": delegates, "scope": [scope], "lifetime": "3600s"]),
            headers: { _ in [("Authorization", token.authorization), ("Content-Type", "application/json")] },
            mapError: { status, body in GoogleCredentials.tokenError(status: status, body: body, what: what) })
        defer { body.wipe() }
        guard let value = JSONSecretField.takeText("accessToken", from: &body), value.count > 0 else {
            throw DBKeyError(.kmsUnavailable, "IAM Credentials answered without an accessToken for \(what).")
        }
        let fields = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        let formatter = ISO8601DateFormatter()
        let expires = (fields["expireTime"] as? String).flatMap { text in
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            if let date = formatter.date(from: text) { return date }
            formatter.formatOptions = [.withInternetDateTime]
            return formatter.date(from: text)
        }
        let seconds = Int((expires ?? Date(timeIntervalSinceNow: 3600)).timeIntervalSinceNow)
        guard seconds > 0 else {
            throw DBKeyError(.kmsUnavailable, "IAM Credentials answered with a token that has expired, for \(what).")
        }
        return BearerToken(value: value, lifetime: .seconds(seconds))
    }
}

/// Workload identity federation (`external_account`): a subject token from a file or a URL,
/// exchanged at STS (RFC 8693) for a federated token, which may then impersonate a service
/// account.
struct ExternalAccount: Sendable {
    enum SubjectSource: Sendable {
        case file(String)
        case url(URL, headers: [String: String])
    }

    let audience: String
    let subjectTokenType: String
    let tokenURL: URL
    let subject: SubjectSource
    /// The JSON field holding the subject token, when the source answers JSON.
    let jsonField: String?
    let impersonationURL: URL?

    init(_ object: [String: Any], path: String) throws {
        guard let audience = object["audience"] as? String,
            let subjectTokenType = object["subject_token_type"] as? String,
            let source = object["credential_source"] as? [String: Any]
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(path) lacks audience, subject_token_type or credential_source (an external_account file).")
        }
        self.audience = audience
        self.subjectTokenType = subjectTokenType
        tokenURL = try EndpointURL.requiringTLS(
            object["token_url"] as? String ?? "https://sts.googleapis.com/v1/token", what: "token_url of \(path)")
        if let file = source["file"] as? String {
            subject = .file(file)
        } else if let text = source["url"] as? String {
            subject = .url(
                try EndpointURL.metadataService(text, what: "credential_source url of \(path)"),
                headers: source["headers"] as? [String: String] ?? [:])
        } else {
            let kind = source["environment_id"] as? String ?? (source["executable"] != nil ? "executable" : "unknown")
            throw DBKeyError(
                .invalidConfiguration,
                "The credential_source of \(path) is of a kind DBKey does not read (\(kind)); it reads a subject token from a file or a URL."
            )
        }
        let format = source["format"] as? [String: Any]
        switch format?["type"] as? String {
        case nil, "text": jsonField = nil
        case "json":
            guard let field = format?["subject_token_field_name"] as? String else {
                throw DBKeyError(
                    .invalidConfiguration, "The credential_source of \(path) is JSON with no subject_token_field_name.")
            }
            jsonField = field
        case let other?:
            throw DBKeyError(
                .invalidConfiguration, "The credential_source format \"\(other)\" of \(path) is neither text nor json.")
        }
        if let text = object["service_account_impersonation_url"] as? String {
            let url = try EndpointURL.requiringTLS(text, what: "service_account_impersonation_url of \(path)")
            _ = try ImpersonationURL.account(checking: url, path: path)
            impersonationURL = url
        } else {
            impersonationURL = nil
        }
    }

    /// The subject token, in secure memory: the file read anew (it is rotated), or the URL asked.
    func subjectToken(_ client: KmsHTTPClient) async throws -> SecureBuffer {
        var raw: Data
        switch subject {
        case .file(let path):
            raw = try TokenFile.read(path, what: "subject token file").withUnsafeBytes { Data($0) }
        case .url(let url, let headers):
            raw = try await client.send(
                "subject token", method: "GET", url: url, body: .none,
                headers: { _ in headers.map { ($0.key, $0.value) } },
                mapError: { status, _ in
                    DBKeyError(
                        status >= 500 || status == 429 ? .kmsUnavailable : .kmsAccessDenied,
                        "The subject token URL \(url.host ?? "?") answered HTTP \(status).")
                })
        }
        defer { raw.wipe() }
        if let jsonField {
            guard let token = JSONSecretField.takeText(jsonField, from: &raw), token.count > 0 else {
                throw DBKeyError(.kmsAccessDenied, "The subject token source holds no \"\(jsonField)\" field.")
            }
            return token
        }
        while let last = raw.last, last == 0x0A || last == 0x0D || last == 0x20 { raw.removeLast() }
        guard !raw.isEmpty else { throw DBKeyError(.kmsAccessDenied, "The subject token source is empty.") }
        return raw.withUnsafeBytes { SecureBuffer(copying: $0) }
    }

    /// The federated token STS gives for the subject token.
    func exchange(_ client: KmsHTTPClient, for what: String) async throws -> BearerToken {
        let subjectToken = try await subjectToken(client)
        let fields: [(name: String, value: FormBody.Value)] = [
            ("grant_type", .text("urn:ietf:params:oauth:grant-type:token-exchange")), ("audience", .text(audience)),
            ("scope", .text(GoogleCredentials.platformScope)),
            ("requested_token_type", .text("urn:ietf:params:oauth:token-type:access_token")),
            ("subject_token", .secret(subjectToken)), ("subject_token_type", .text(subjectTokenType)),
        ]
        var body = try await client.send(
            "STS token exchange", method: "POST", url: tokenURL, body: .secret(FormBody.encode(fields)),
            headers: { _ in [("Content-Type", "application/x-www-form-urlencoded")] },
            mapError: { status, body in GoogleCredentials.tokenError(status: status, body: body, what: what) })
        return try BearerToken.taking(from: &body, issuer: tokenURL.absoluteString)
    }
}

/// A service account's JSON key file, its private key in secure memory.
struct ServiceAccountKey: Sendable {
    let clientEmail: String
    let privateKeyId: String?
    let tokenURI: URL
    /// The private key's DER (PKCS#8 or PKCS#1).
    let privateKey: SecureBuffer

    /// The key of a `service_account` object whose `private_key` was taken into `privateKey`.
    init(_ object: [String: Any], privateKey pem: SecureBuffer?, path: String) throws {
        guard let pem else { throw DBKeyError(.invalidConfiguration, "\(path) has no private_key.") }
        guard let email = object["client_email"] as? String, !email.isEmpty else {
            throw DBKeyError(.invalidConfiguration, "\(path) has no client_email.")
        }
        clientEmail = email
        privateKeyId = object["private_key_id"] as? String
        tokenURI = try EndpointURL.requiringTLS(
            object["token_uri"] as? String ?? "https://oauth2.googleapis.com/token", what: "token_uri of \(path)")
        guard let der = ServiceAccountKey.der(ofPEM: pem) else {
            throw DBKeyError(.invalidConfiguration, "The private_key of \(path) is not a PEM private key.")
        }
        privateKey = der
    }

    /// The base64 between a PEM's `-----BEGIN …-----` and `-----END …-----` lines, decoded.
    static func der(ofPEM pem: SecureBuffer) -> SecureBuffer? {
        pem.withUnsafeBytes { bytes -> SecureBuffer? in
            let dashes = Array("-----".utf8)
            // The header ends at the first newline; the footer starts at the last "-----" run's start.
            guard let headerEnd = bytes.firstIndex(of: UInt8(ascii: "\n")),
                let footer = bytes[(headerEnd + 1)...].firstRange(of: dashes)?.lowerBound
            else { return nil }
            var length = 0
            let text = SecureBuffer(count: footer - headerEnd) { output in
                for byte in bytes[(headerEnd + 1)..<footer] where byte > 0x20 {
                    output[length] = byte
                    length += 1
                }
            }
            return text.withUnsafeBytes {
                SecureBuffer.decodingBase64(UnsafeRawBufferPointer(rebasing: $0.prefix(length)))
            }
        }
    }

    /// An RS256 JWT asserting the account for `scope` at the token endpoint, valid for an hour.
    func signedAssertion(scope: String) throws -> SecureBuffer {
        let now = Int(Date().timeIntervalSince1970)
        var header: [String: Any] = ["alg": "RS256", "typ": "JWT"]
        if let privateKeyId { header["kid"] = privateKeyId }
        let claims: [String: Any] = [
            "iss": clientEmail, "scope": scope, "aud": tokenURI.absoluteString, "iat": now, "exp": now + 3600,
        ]
        return try SignedJWT.make(header: header, claims: claims) { input in
            do {
                let key = try privateKey.withUnsafeBytes { try _RSA.Signing.PrivateKey(derRepresentation: $0) }
                return Array(
                    try key.signature(for: SHA256.hash(data: input), padding: .insecurePKCS1v1_5).rawRepresentation)
            } catch {
                throw DBKeyError(
                    .invalidConfiguration,
                    "The service account \(clientEmail)'s private key cannot sign (it must be an RSA key of 2048 bits or more)."
                )
            }
        }
    }
}
