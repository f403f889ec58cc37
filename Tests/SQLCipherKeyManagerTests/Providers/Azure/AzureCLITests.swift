import Foundation
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAzure

/// The Azure CLI's sign-in: the real `az` (Scripts/azure-cli installs it) signed in to the fake
/// Entra as a service principal, with azure-identity's AzureCliCredential beside DBKey.
@Suite("Azure CLI sign-ins", .tags(.azure))
struct AzureCLITests {
    let context: EncryptionContext = ["purpose": "azure-cli-test"]

    /// Runs `az` with `arguments` in `environment`; its standard output.
    @discardableResult
    static func az(_ arguments: [String], _ environment: [String: String]) async throws -> String {
        let result = try await run(try #require(environment["DBKEY_AZ"]), arguments, environment: environment)
        #expect(result.status == 0, "az \(arguments.prefix(2).joined(separator: " ")): \(result.stderr.suffix(800))")
        return result.stdout
    }

    /// An environment whose PATH has `az` (and the system's tools), its configuration in
    /// `directory`; with `signedIn`, the fake vault is a cloud of the CLI's and a service
    /// principal allowed every key operation has run `az login`. IMDS does not answer.
    static func environment(_ directory: TemporaryDirectory, signedIn: Bool) async throws -> [String: String] {
        let cli = try scriptVariable("DBKEY_TEST_AZURE_CLI", describing: "Azure CLI")
        let bin = directory.file("bin")
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: bin + "/az", withDestinationPath: cli)
        var environment = [
            "PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"),
            "HOME": directory.path, "AZURE_CONFIG_DIR": directory.file("azure"),
            "REQUESTS_CA_BUNDLE": try FakeKeyVault.value("CA_FILE"),
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9", "DBKEY_AZ": cli,
        ]
        guard signedIn else { return environment }
        let origin = try FakeKeyVault.origin().absoluteString
        var setup = environment
        setup["AZURE_CORE_COLLECT_TELEMETRY"] = "false"
        try await Self.az(["config", "set", "core.collect_telemetry=false", "core.instance_discovery=false"], setup)
        try await Self.az(
            ["cloud", "register", "--name", "DBKeyFake", "--endpoint-resource-manager", origin + "/arm"], setup)
        try await Self.az(["cloud", "set", "--name", "DBKeyFake"], setup)
        let principal = try await FakeKeyVault.client(operations: ["get", "wrapKey", "unwrapKey"])
        try await Self.az(
            [
                "login", "--service-principal", "--username", principal.id, "--password", principal.secret, "--tenant",
                try FakeKeyVault.value("TENANT"), "--allow-no-subscriptions", "--output", "none",
            ], setup)
        environment["DBKEY_PRINCIPAL"] = principal.id
        return environment
    }

    /// What IMDS does on the machine: nothing (asked once, then the CLI straight away), or
    /// answer 400 for the user-assigned identity AZURE_CLIENT_ID names (asked each time, as
    /// azure-identity asks it).
    enum InstanceMetadata: String, CaseIterable, Sendable {
        case noAnswer = "IMDS does not answer"
        case noIdentity = "IMDS has no such identity"
    }

    @Test(
        "when IMDS does not answer or has no identity, the Azure CLI's sign-in gives the token, as DefaultAzureCredential takes it",
        arguments: InstanceMetadata.allCases)
    func signedIn(instanceMetadata: InstanceMetadata) async throws {
        let directory = try TemporaryDirectory()
        var environment = try await Self.environment(directory, signedIn: true)
        if instanceMetadata == .noIdentity {
            environment["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = "http://127.0.0.1:\(try FakeKeyVault.value("HTTP_PORT"))"
            environment["AZURE_CLIENT_ID"] = "00000000-0000-4000-8000-00000000dead"
        }
        let microsoft = try await FakeKeyVault.defaultAzureCredential(environment, key: "conformance-rsa")
        #expect(microsoft.credential == "AzureCliCredential" && microsoft.status == 200, "\(microsoft)")

        let credentials = try AzureCredentials.fromEnvironment(ProviderEnvironment(environment))
        #expect(credentials.summary.contains("Azure CLI") && credentials.summary.contains(directory.file("bin/az")))
        let transport = CountingTransport()
        let kms = try FakeKeyVault.provider(credentials: credentials, transport: transport)
        let kekId = try FakeKeyVault.kekId("conformance-rsa")
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)

        // A second token: the CLI straight away.
        let challenge = try AuthenticationChallenge(
            header:
                "Bearer authorization=\"\(try FakeKeyVault.origin())/\(try FakeKeyVault.value("TENANT"))\", resource=\"\(try FakeKeyVault.origin())\"",
            vaultHost: try FakeKeyVault.host())
        let client = KmsHTTPClient(transport: transport, retry: RetryPolicy(), logger: silentLogger)
        let token = try await credentials.fetchToken(for: challenge, client)
        #expect(
            try await FakeKeyVault.issuedTokens().contains(token.authorization.dropFirst("Bearer ".count).description))
        #expect(
            transport.count("/metadata/identity/oauth2/token") == (instanceMetadata == .noAnswer ? 1 : 2),
            "IMDS asked once if it did not answer, else for each token")
    }

    @Test(
        "what az prints is read as azure-identity reads it: expires_on, else an older CLI's local expiresOn; no token, an expired one or a refusal is access denied without the token"
    )
    func answers() async throws {
        let directory = try TemporaryDirectory()
        let challenge = try AuthenticationChallenge(
            header:
                "Bearer authorization=\"https://login.example.com/tenant-1\", resource=\"https://vault.example.net\"",
            vaultHost: "kv.vault.example.net")
        /// An `az` that prints `output` on standard output (and `errors` on standard error) and
        /// exits with `status`, and records its arguments.
        func cli(_ output: String, errors: String = "", status: Int = 0) -> AzureCLI {
            let name = directory.file("az-\(UUID().uuidString.prefix(8))")
            AWSCredentialChainTests.write(
                "#!/bin/sh\necho \"$@\" > \(name).arguments\ncat <<'EOF'\n\(output)\nEOF\ncat >&2 <<'EOF'\n\(errors)\nEOF\nexit \(status)\n",
                to: name, mode: 0o700)
            return AzureCLI(executable: name, environment: [:])
        }
        let later = Int(Date().timeIntervalSince1970) + 3600
        let current = cli(#"{"accessToken": "tok-1", "expires_on": \#(later), "tokenType": "Bearer"}"#)
        let token = try await current.token(for: challenge)
        #expect(token.authorization == "Bearer tok-1" && token.refreshAt > .now + .seconds(3000))
        let arguments = try String(contentsOfFile: current.executable + ".arguments", encoding: .utf8)
        #expect(
            arguments.trimmingCharacters(in: .whitespacesAndNewlines)
                == "account get-access-token --output json --resource https://vault.example.net --tenant tenant-1")

        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSSSSS"
        let local = formatter.string(from: Date(timeIntervalSinceNow: 1800))
        let older = try await cli(#"{"accessToken": "tok-2", "expiresOn": "\#(local)"}"#).token(for: challenge)
        #expect(older.authorization == "Bearer tok-2" && older.refreshAt > .now + .seconds(1000))

        await expectError(.kmsAccessDenied, containing: ["without an accessToken"]) {
            _ = try await cli(#"{"tokenType": "Bearer", "expires_on": \#(later)}"#).token(for: challenge)
        }
        let past = Int(Date().timeIntervalSince1970) - 60
        let expired = await expectError(.kmsAccessDenied, containing: ["has expired"]) {
            _ = try await cli(#"{"accessToken": "tok-old", "expires_on": \#(past)}"#).token(for: challenge)
        }
        #expect(expired?.message.contains("tok-old") == false)
        let refused = await expectError(.kmsAccessDenied, containing: ["could not get a token", "AADSTS50076"]) {
            _ = try await cli(
                "", errors: #"ERROR: AADSTS50076: multi-factor authentication required. {"accessToken": "tok-leaked"}"#,
                status: 1
            ).token(for: challenge)
        }
        #expect(refused?.message.contains("tok-leaked") == false)
    }

    @Test("a CLI that is not signed in is access denied, saying to run az login")
    func notSignedIn() async throws {
        let directory = try TemporaryDirectory()
        let environment = try await Self.environment(directory, signedIn: false)
        let credentials = try AzureCredentials.fromEnvironment(ProviderEnvironment(environment))
        await expectError(.kmsAccessDenied, containing: ["Azure CLI", "not signed in", "az login"]) {
            _ = try await FakeKeyVault.provider(credentials: credentials).generateDataKey(
                kekId: try FakeKeyVault.kekId("conformance-rsa"), context: context)
        }
    }
}
