import Foundation
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerGCP

/// The fake Cloud KMS and drongo that `Scripts/test` starts (through `Scripts/gcpkms`) and
/// describes in `DBKEY_TEST_GCP_*` and `DBKEY_TEST_DRONGO_*` variables. A test that needs them
/// fails when they are missing.
enum FakeCloudKms: FakeKmsServer {
    static func value(_ name: String) throws -> String {
        try scriptVariable("DBKEY_TEST_GCP_\(name)", describing: "fake Cloud KMS")
    }

    static func endpoint() throws -> URL { URL(string: try value("ENDPOINT"))! }

    /// The service-account key file the fake issued at start (all permissions).
    static func serviceAccountFile() throws -> String { try value("SERVICE_ACCOUNT") }

    /// A provider with the service account (or `credentials`), through `transport` when given.
    static func provider(
        credentials: GoogleCredentials? = nil,
        endpoint: URL? = nil,
        retry: RetryPolicy = .init(attempts: 2, timeout: .seconds(5), initialBackoff: .milliseconds(10)),
        transport: (any KmsTransport)? = nil
    ) throws -> GoogleCloudKms {
        GoogleCloudKms(
            credentials: try credentials ?? .serviceAccount(keyFile: serviceAccountFile()),
            endpoint: try endpoint ?? self.endpoint(), retry: retry,
            transport: transport ?? URLSessionKmsTransport(), logger: silentLogger)
    }

    /// The environment a `dbkey` process needs to reach the fake as a service account.
    static func processEnvironment() throws -> [String: String] {
        [
            "GOOGLE_APPLICATION_CREDENTIALS": try serviceAccountFile(),
            GoogleCloudKms.endpointVariable: try value("ENDPOINT"),
        ]
    }

    static func adminURL() throws -> URL { try endpoint() }
    static func adminToken() throws -> String { try value("ADMIN_TOKEN") }

    /// A new key of the test's own, version 1 primary; its resource name.
    static func createKey() async throws -> String {
        let name = "projects/dbkey-test/locations/global/keyRings/tests/cryptoKeys/k-\(UUID().uuidString.prefix(8))"
        try await admin("keys", ["name": name])
        return name
    }

    /// Every bearer token the fake issued or was given.
    static func issuedTokens() async throws -> [String] { try await admin("issued")["tokens"] as? [String] ?? [] }

    /// A new primary version; its number.
    @discardableResult
    static func rotate(_ key: String) async throws -> Int {
        let version = try await admin("rotate", ["name": key])["version"] as? String ?? ""
        return Int(version.split(separator: "/").last ?? "") ?? 0
    }

    static func setState(_ key: String, version: Int, _ state: String) async throws {
        try await admin("state", ["version": "\(key)/cryptoKeyVersions/\(version)", "state": state])
    }

    /// A new service account with only `permissions`; its key file (in `directory`).
    static func serviceAccount(permissions: [String], in directory: TemporaryDirectory) async throws -> String {
        let answer = try await admin("account", ["directory": directory.path, "permissions": permissions])
        return try #require(answer["path"] as? String)
    }

    /// A user with a refresh token: the authorized_user file (0600, in `directory`) and the user.
    static func user(in directory: TemporaryDirectory) async throws -> (path: String, principal: String) {
        let answer = try await admin("user", ["directory": directory.path])
        return (try #require(answer["path"] as? String), try #require(answer["principal"] as? String))
    }

    /// A new service account (all Cloud KMS permissions) that `sources` may impersonate; its email.
    static func impersonationTarget(sources: [String]) async throws -> String {
        try #require(try await admin("impersonation", ["sources": sources])["target"] as? String)
    }

    /// A workload identity pool provider trusting the fake's issuer for `subject`, and
    /// external_account files for a subject token (for `tokenSubject`, by default the same) in a
    /// file and at a URL, in `format` (text or json), impersonating `impersonate` when given.
    static func pool(
        subject: String, tokenSubject: String? = nil, format: String = "text", impersonate: String? = nil,
        in directory: TemporaryDirectory
    ) async throws -> (fileConfig: String, urlConfig: String, tokenFile: String, audience: String) {
        var body: [String: Any] = [
            "directory": directory.path, "subject": subject, "token_subject": tokenSubject ?? subject, "format": format,
        ]
        if let impersonate { body["impersonate"] = impersonate }
        let answer = try await admin("pool", body)
        return (
            try #require(answer["file_config"] as? String), try #require(answer["url_config"] as? String),
            try #require(answer["token_file"] as? String), try #require(answer["audience"] as? String)
        )
    }

    /// google-auth's Application Default Credentials in `environment`
    /// (Scripts/interop/gcp_credential.py): the credentials' class, and the fake's status for a
    /// GET of `key` with their token.
    static func googleAuth(_ environment: [String: String], key: String) async throws -> (
        type: String, status: Int, quotaProject: String?
    ) {
        let python = try requireTool("python3", installedBy: "python3")
        var variables = environment
        variables["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        variables["GOOGLE_CLOUD_PROJECT"] = "fake-project"
        variables["DBKEY_TEST_TOKEN_ENDPOINT"] = try value("ENDPOINT") + "/token"
        variables["DBKEY_TEST_IAM_ENDPOINT"] = try value("ENDPOINT")
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/gcp_credential.py", try value("ENDPOINT"), key],
            environment: variables)
        #expect(result.status == 0, "gcp_credential.py failed: \(result.stderr.suffix(1500))")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        return (
            try #require(object["type"] as? String), try #require(object["status"] as? Int),
            object["quota_project"] as? String
        )
    }

    /// Google's client (google-cloud-kms, REST) with the service account, through
    /// Scripts/interop/gcp_kms.py, against `endpoint` (default: the fake).
    static func googleClient(_ request: [String: Any], endpoint: String? = nil, token: String? = nil) async throws
        -> [String: String]
    {
        let python = try requireTool("python3", installedBy: "python3")
        let input = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        var environment = ProcessInfo.processInfo.environment.filter { ["PATH", "HOME"].contains($0.key) }
        environment["DBKEY_TEST_GCP_ENDPOINT"] = try endpoint ?? value("ENDPOINT")
        if let token {
            environment["DBKEY_TEST_GCP_TOKEN"] = token
        } else {
            environment["GOOGLE_APPLICATION_CREDENTIALS"] = try serviceAccountFile()
        }
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/gcp_kms.py"], input: input, environment: environment)
        guard result.status == 0 else {
            throw DBKeyError(.kmsUnavailable, "gcp_kms.py failed: \(result.stderr.suffix(400))")
        }
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: String])
    }
}

/// drongo's Cloud KMS in server mode: a second, independent peer. It checks no token.
enum Drongo {
    static func endpoint() throws -> URL {
        URL(string: try scriptVariable("DBKEY_TEST_DRONGO_ENDPOINT", describing: "drongo server"))!
    }

    static func provider() throws -> GoogleCloudKms {
        try FakeCloudKms.provider(
            credentials: .accessToken(try Passphrase.fromText("drongo-checks-no-token")), endpoint: endpoint())
    }

    /// The key Scripts/gcpkms made in drongo.
    static let kekId = "projects/dbkey-test/locations/global/keyRings/conformance/cryptoKeys/conformance"
}
