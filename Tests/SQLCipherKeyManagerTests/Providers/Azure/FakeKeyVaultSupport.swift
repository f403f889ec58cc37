import Foundation
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAzure

/// The fake Key Vault that `Scripts/test` starts (through `Scripts/azurekv`) and describes in
/// `DBKEY_TEST_AZURE_*` variables. A test that needs it fails when it is missing.
enum FakeKeyVault: FakeKmsServer {
    static func value(_ name: String) throws -> String {
        try scriptVariable("DBKEY_TEST_AZURE_\(name)", describing: "fake Key Vault")
    }

    /// The vault's host: `127.0.0.1:PORT`.
    static func host() throws -> String { "127.0.0.1:" + (try value("PORT")) }
    static func origin() throws -> URL { URL(string: "https://" + (try host()))! }

    /// The KEK id of key `name` in the vault.
    static func kekId(_ name: String) throws -> String { "\(try host())/keys/\(name)" }

    /// The service principal Scripts/azurekv registered, with every key operation.
    static func clientCredentials(secret: String? = nil, tenant: String? = nil) throws -> AzureCredentials {
        .clientSecret(
            tenant: try tenant ?? value("TENANT"), clientId: try value("CLIENT_ID"),
            secret: try Passphrase.fromText(secret ?? value("CLIENT_SECRET")), authority: try origin())
    }

    static func provider(
        credentials: AzureCredentials? = nil,
        retry: RetryPolicy = .init(attempts: 2, timeout: .seconds(5), initialBackoff: .milliseconds(10)),
        transport: (any KmsTransport)? = nil
    ) throws -> AzureKeyVault {
        AzureKeyVault(
            credentials: try credentials ?? clientCredentials(), retry: retry,
            transport: transport ?? URLSessionKmsTransport(), logger: silentLogger)
    }

    /// The environment a `dbkey` process needs to reach the vault as the service principal.
    static func processEnvironment() throws -> [String: String] {
        [
            "AZURE_TENANT_ID": try value("TENANT"), "AZURE_CLIENT_ID": try value("CLIENT_ID"),
            "AZURE_CLIENT_SECRET": try value("CLIENT_SECRET"), "AZURE_AUTHORITY_HOST": try origin().absoluteString,
        ]
    }

    static func adminURL() throws -> URL { try origin() }
    static func adminToken() throws -> String { try value("ADMIN_TOKEN") }

    /// A new key of the test's own (`RSA` or `oct-HSM`): its name and first version.
    static func createKey(type: String = "RSA") async throws -> (name: String, version: String) {
        let name = "k-" + UUID().uuidString.prefix(8).lowercased()
        let kid = try await admin("keys", ["name": name, "kty": type, "size": type == "RSA" ? 2048 : 256])["kid"]
        return (name, String((kid as? String ?? "").split(separator: "/").last ?? ""))
    }

    /// Every bearer token the vault and its Entra endpoints issued.
    static func issuedTokens() async throws -> [String] { try await admin("issued")["tokens"] as? [String] ?? [] }

    /// A new version of key `name`; its id.
    @discardableResult
    static func rotate(_ name: String) async throws -> String {
        String((try await admin("rotate", ["name": name])["kid"] as? String ?? "").split(separator: "/").last ?? "")
    }

    /// A service principal with only `operations`: (client id, secret).
    static func client(operations: [String]) async throws -> (id: String, secret: String) {
        let answer = try await admin("client", ["operations": operations])
        return (try #require(answer["client_id"] as? String), try #require(answer["client_secret"] as? String))
    }

    /// A client that trusts the fake's OIDC issuer for `subject` (a federated credential), and a
    /// token the issuer signed for `tokenSubject` (by default the same), written in `directory`
    /// as Kubernetes projects it: (client id, token file).
    static func federatedClient(subject: String, tokenSubject: String? = nil, in directory: TemporaryDirectory)
        async throws -> (clientId: String, tokenFile: String)
    {
        let answer = try await admin(
            "federated",
            ["directory": directory.path, "subject": subject, "token_subject": tokenSubject ?? subject])
        return (try #require(answer["client_id"] as? String), try #require(answer["token_file"] as? String))
    }

    /// A client that proves itself with a certificate, and the certificate's file (0600) in
    /// `directory`: `format` `pem`, `pem-rsa`, `pem-encrypted` or `pkcs12`, encrypted with
    /// `password`; `chain` has a CA sign it and follow it; `key` `ec` for an EC key;
    /// `registered` false registers another certificate. (client id, file, SHA-1 thumbprint).
    static func certificateClient(
        format: String, password: String? = nil, chain: Bool = false, key: String = "rsa", registered: Bool = true,
        in directory: TemporaryDirectory
    ) async throws -> (clientId: String, path: String, thumbprint: String) {
        var request: [String: Any] = [
            "directory": directory.path, "format": format, "chain": chain, "key": key, "registered": registered,
        ]
        if let password { request["password"] = password }
        let answer = try await admin("certificate", request)
        return (
            try #require(answer["client_id"] as? String), try #require(answer["path"] as? String),
            try #require(answer["thumbprint"] as? String)
        )
    }

    /// azure-identity's DefaultAzureCredential in `environment` (Scripts/interop/azure_credential.py):
    /// the class of the credential it took, and the vault's status for a GET of key `name` with
    /// its token.
    static func defaultAzureCredential(_ environment: [String: String], key name: String) async throws -> (
        credential: String, status: Int
    ) {
        let python = try requireTool("python3", installedBy: "python3")
        var variables = environment
        variables["PATH"] = environment["PATH"] ?? ProcessInfo.processInfo.environment["PATH"]
        variables["REQUESTS_CA_BUNDLE"] = try value("CA_FILE")
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/azure_credential.py", try origin().absoluteString, name],
            environment: variables)
        #expect(result.status == 0, "azure_credential.py failed: \(result.stderr.suffix(1500))")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        return (try #require(object["credential"] as? String), try #require(object["status"] as? Int))
    }

    /// Microsoft's client (azure-keyvault-keys with azure-identity) through
    /// Scripts/interop/azure_kv.py, as a principal allowed wrapKey and unwrapKey but not get, so
    /// that it cannot wrap locally.
    static func microsoftClient(_ request: [String: Any]) async throws -> [String: String] {
        let python = try requireTool("python3", installedBy: "python3")
        let principal = try await client(operations: ["wrapKey", "unwrapKey"])
        let input = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        var environment = ProcessInfo.processInfo.environment.filter { ["PATH", "HOME"].contains($0.key) }
        environment["AZURE_TENANT_ID"] = try value("TENANT")
        environment["AZURE_CLIENT_ID"] = principal.id
        environment["AZURE_CLIENT_SECRET"] = principal.secret
        environment["AZURE_AUTHORITY_HOST"] = try origin().absoluteString
        environment["REQUESTS_CA_BUNDLE"] = try value("CA_FILE")
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/azure_kv.py"], input: input, environment: environment)
        #expect(result.status == 0, "azure_kv.py failed: \(result.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: String])
    }
}
