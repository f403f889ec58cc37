import Foundation
import KmsHTTP
import SQLCipherKeyManager
import Synchronization

/// Where ``AzureKeyVault`` gets its Microsoft Entra bearer tokens, found as the Azure SDKs'
/// `DefaultAzureCredential` finds them, for the scope the vault's challenge names.
///
/// In order: a service principal with a client secret (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
/// `AZURE_CLIENT_SECRET`; `AZURE_AUTHORITY_HOST` for another cloud, default
/// `https://login.microsoftonline.com`); a service principal with a client certificate
/// (`AZURE_CLIENT_CERTIFICATE_PATH`, PEM or PKCS #12, with `AZURE_CLIENT_CERTIFICATE_PASSWORD`
/// and `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN`); workload identity (`AZURE_FEDERATED_TOKEN_FILE` with
/// `AZURE_TENANT_ID` and `AZURE_CLIENT_ID`, as AKS injects them: the token file, read anew for
/// each token, is the client assertion); the managed identity of App Service, Functions or
/// Container Apps (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER`); the managed identity of a
/// virtual machine or scale set through the instance metadata service (IMDS,
/// `http://169.254.169.254`, or `AZURE_POD_IDENTITY_AUTHORITY_HOST`); when that does not answer
/// (IMDS is then not asked again) or has no identity for this machine (400), and `az` is on the
/// `PATH`, the Azure CLI's sign-in (`az login`). With a managed identity, `AZURE_CLIENT_ID` picks a user-assigned identity.
public struct AzureCredentials: Sendable {
    enum Source: Sendable {
        case clientSecret(tenant: String, clientId: String, secret: SecureBuffer, authority: URL)
        case clientCertificate(
            tenant: String, clientId: String, certificate: ClientCertificate, sendChain: Bool, authority: URL)
        case workloadIdentity(tenant: String, clientId: String, tokenFile: String, authority: URL)
        case appService(endpoint: URL, header: SecureBuffer, clientId: String?)
        /// IMDS, and the Azure CLI when IMDS does not answer.
        case instanceMetadata(endpoint: URL, clientId: String?, cli: AzureCLI?)
    }

    let source: Source
    /// Set once IMDS has not answered: from then on the Azure CLI is asked straight away, as
    /// azure-identity's chain stops probing.
    private let instanceMetadataAbsent = Flag()

    private final class Flag: Sendable {
        private let state = Mutex(false)
        func set() { state.withLock { $0 = true } }
        var isSet: Bool { state.withLock { $0 } }
    }

    init(source: Source) {
        self.source = source
    }

    /// A service principal's client-secret credential.
    ///
    /// - Parameter authority: The Entra authority host; `nil` for the public cloud's.
    public static func clientSecret(
        tenant: String, clientId: String, secret: SecureBuffer, authority: URL? = nil
    ) -> AzureCredentials {
        AzureCredentials(
            source: .clientSecret(
                tenant: tenant, clientId: clientId, secret: secret,
                authority: authority ?? URL(string: "https://login.microsoftonline.com")!))
    }

    /// Finds credentials as described above.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a service principal
    ///   named in part, or an endpoint that is not https (http only to loopback or link-local
    ///   addresses, where managed identity lives).
    public static func fromEnvironment(_ environment: ProviderEnvironment) throws -> AzureCredentials {
        func variable(_ name: String) -> String? { environment[name].flatMap { $0.isEmpty ? nil : $0 } }
        let clientId = variable("AZURE_CLIENT_ID")
        func authority() throws -> URL {
            try EndpointURL.requiringTLS(
                variable("AZURE_AUTHORITY_HOST") ?? "https://login.microsoftonline.com", what: "AZURE_AUTHORITY_HOST")
        }
        func principal(_ given: String, _ what: String) throws -> (tenant: String, clientId: String) {
            guard let tenant = variable("AZURE_TENANT_ID"), let clientId else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(given) is set, but AZURE_TENANT_ID or AZURE_CLIENT_ID is not: \(what) needs all three.")
            }
            return (tenant, clientId)
        }
        if let secret = variable("AZURE_CLIENT_SECRET") {
            let (tenant, clientId) = try principal("AZURE_CLIENT_SECRET", "a service principal")
            return clientSecret(
                tenant: tenant, clientId: clientId,
                secret: try Passphrase.fromText(secret, kind: "Azure client secret"),
                authority: try authority())
        }
        if let path = variable("AZURE_CLIENT_CERTIFICATE_PATH") {
            let (tenant, clientId) = try principal("AZURE_CLIENT_CERTIFICATE_PATH", "a certificate credential")
            let password = try variable("AZURE_CLIENT_CERTIFICATE_PASSWORD").map {
                try Passphrase.fromText($0, kind: "AZURE_CLIENT_CERTIFICATE_PASSWORD")
            }
            return AzureCredentials(
                source: .clientCertificate(
                    tenant: tenant, clientId: clientId,
                    certificate: try ClientCertificate.load(path: path, password: password),
                    sendChain: ["true", "1"].contains(variable("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")?.lowercased()),
                    authority: try authority()))
        }
        if let tokenFile = variable("AZURE_FEDERATED_TOKEN_FILE") {
            let (tenant, clientId) = try principal("AZURE_FEDERATED_TOKEN_FILE", "workload identity")
            return AzureCredentials(
                source: .workloadIdentity(
                    tenant: tenant, clientId: clientId, tokenFile: tokenFile, authority: try authority()))
        }
        if let endpoint = variable("IDENTITY_ENDPOINT"), let header = variable("IDENTITY_HEADER") {
            return AzureCredentials(
                source: .appService(
                    endpoint: try EndpointURL.metadataService(endpoint, what: "IDENTITY_ENDPOINT"),
                    header: try Passphrase.fromText(header, kind: "IDENTITY_HEADER"), clientId: clientId))
        }
        let host = variable("AZURE_POD_IDENTITY_AUTHORITY_HOST") ?? "http://169.254.169.254"
        let endpoint = try EndpointURL.metadataService(
            host.hasSuffix("/") ? String(host.dropLast()) : host, what: "AZURE_POD_IDENTITY_AUTHORITY_HOST"
        ).appendingPathComponent("metadata/identity/oauth2/token")
        return AzureCredentials(
            source: .instanceMetadata(endpoint: endpoint, clientId: clientId, cli: AzureCLI.find(environment)))
    }

    /// A description of the source, with no secret: for messages.
    var summary: String {
        switch source {
        case .clientSecret(_, let clientId, _, _): "the service principal \(clientId)"
        case .clientCertificate(_, let clientId, let certificate, _, _):
            "the service principal \(clientId) with the certificate \(certificate.thumbprintHex) (\(certificate.path))"
        case .workloadIdentity(_, let clientId, let tokenFile, _):
            "the workload identity \(clientId) (AZURE_FEDERATED_TOKEN_FILE \(tokenFile))"
        case .appService: "the managed identity (IDENTITY_ENDPOINT)"
        case .instanceMetadata(let endpoint, _, let cli):
            "the managed identity (IMDS at \(endpoint.host ?? "?"))\(cli.map { ", else \($0.summary)" } ?? "")"
        }
    }

    /// The tenant the credential belongs to, when it names one.
    var tenant: String? {
        switch source {
        case .clientSecret(let tenant, _, _, _), .clientCertificate(let tenant, _, _, _, _),
            .workloadIdentity(let tenant, _, _, _):
            tenant
        case .appService, .instanceMetadata: nil
        }
    }

    /// A new token for what `challenge` asks.
    func fetchToken(for challenge: AuthenticationChallenge, _ client: KmsHTTPClient) async throws -> BearerToken {
        switch source {
        case .clientSecret(let tenant, let clientId, let secret, let authority):
            return try await entraToken(
                tenant: tenant, clientId: clientId, [("client_secret", .secret(secret))], authority, challenge, client)
        case .clientCertificate(let tenant, let clientId, let certificate, let sendChain, let authority):
            let assertion = try certificate.assertion(
                clientId: clientId, audience: AzureCredentials.tokenURL(authority, tenant).absoluteString,
                sendChain: sendChain)
            return try await entraToken(
                tenant: tenant, clientId: clientId, AzureCredentials.assertion(assertion), authority, challenge, client)
        case .workloadIdentity(let tenant, let clientId, let tokenFile, let authority):
            let assertion = try TokenFile.read(tokenFile, what: "federated token file (AZURE_FEDERATED_TOKEN_FILE)")
            return try await entraToken(
                tenant: tenant, clientId: clientId, AzureCredentials.assertion(assertion), authority, challenge, client)
        case .appService(let endpoint, let header, let clientId):
            var query = [
                URLQueryItem(name: "api-version", value: "2019-08-01"),
                URLQueryItem(name: "resource", value: challenge.resource),
            ]
            if let clientId { query.append(URLQueryItem(name: "client_id", value: clientId)) }
            let headerValue = header.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            return try await managedIdentityToken(endpoint, query, [("X-IDENTITY-HEADER", headerValue)], client)
        case .instanceMetadata(let endpoint, let clientId, let cli):
            if let cli, instanceMetadataAbsent.isSet { return try await cli.token(for: challenge) }
            var query = [
                URLQueryItem(name: "api-version", value: "2018-02-01"),
                URLQueryItem(name: "resource", value: challenge.resource),
            ]
            if let clientId { query.append(URLQueryItem(name: "client_id", value: clientId)) }
            var answered: Int?
            do {
                return try await managedIdentityToken(
                    endpoint, query, [("Metadata", "true")], client.probing(), refused: { answered = $0 })
            } catch let error as DBKeyError where answered == 400 && cli != nil {
                // IMDS answers 400 when no identity (or not the one AZURE_CLIENT_ID names) is
                // assigned: azure-identity's chain goes on to the CLI, each time.
                guard let cli else { throw error }
                return try await cli.token(for: challenge)
            } catch let error as DBKeyError where error.code == .kmsUnavailable {
                if let cli {
                    instanceMetadataAbsent.set()
                    return try await cli.token(for: challenge)
                }
                throw DBKeyError(
                    .kmsAccessDenied,
                    "No Azure credentials: AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE and IDENTITY_ENDPOINT are unset, the instance metadata service at \(endpoint.host ?? "?") did not answer (\(error.message)), and there is no az on the PATH. Set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, run on Azure with a managed identity, or sign in with az login.",
                    underlying: error)
            }
        }
    }

    /// The form fields of a client assertion (RFC 7523).
    private static func assertion(_ assertion: SecureBuffer) -> [(name: String, value: FormBody.Value)] {
        [
            ("client_assertion_type", .text("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")),
            ("client_assertion", .secret(assertion)),
        ]
    }

    /// Entra's v2.0 token endpoint of `tenant`.
    private static func tokenURL(_ authority: URL, _ tenant: String) -> URL {
        authority.appendingPathComponent("\(tenant)/oauth2/v2.0/token")
    }

    /// A token from Entra's v2.0 endpoint for the client credentials grant, the client proven
    /// by `credential` (a secret, or an assertion).
    private func entraToken(
        tenant: String, clientId: String, _ credential: [(name: String, value: FormBody.Value)], _ authority: URL,
        _ challenge: AuthenticationChallenge, _ client: KmsHTTPClient
    ) async throws -> BearerToken {
        let url = AzureCredentials.tokenURL(authority, tenant)
        let form = FormBody.encode(
            [("client_id", .text(clientId))] + credential + [
                ("scope", .text(challenge.scope)), ("grant_type", .text("client_credentials")),
            ])
        var body = try await client.send(
            "token", method: "POST", url: url, body: .secret(form),
            headers: { _ in [("Content-Type", "application/x-www-form-urlencoded")] },
            mapError: { status, body in AzureCredentials.tokenError(status: status, body: body, what: summary) })
        return try BearerToken.taking(from: &body, issuer: url.absoluteString)
    }

    /// A managed-identity endpoint's token; `refused` is told the status of an error answer.
    private func managedIdentityToken(
        _ endpoint: URL, _ query: [URLQueryItem], _ headers: [(name: String, value: String)], _ client: KmsHTTPClient,
        refused: (Int) -> Void = { _ in }
    ) async throws -> BearerToken {
        var components = URLComponents(url: endpoint, resolvingAgainstBaseURL: false)!
        components.queryItems = (components.queryItems ?? []) + query
        var body = try await client.send(
            "managed identity token", method: "GET", url: components.url!, body: .none, headers: { _ in headers },
            mapError: { status, body in
                refused(status)
                return AzureCredentials.tokenError(status: status, body: body, what: summary)
            })
        return try BearerToken.taking(from: &body, issuer: summary)
    }

    /// Maps a token endpoint's error (`{"error": "invalid_client", "error_description": …}`).
    static func tokenError(status: Int, body: Data, what: String) -> DBKeyError {
        TokenRequestError.error(
            status: status, body: body, what: what,
            advice:
                "Check the tenant, the client id and that the secret or certificate has not expired and is the one registered (for workload identity: the federated credential's issuer, subject and audience)."
        )
    }
}
