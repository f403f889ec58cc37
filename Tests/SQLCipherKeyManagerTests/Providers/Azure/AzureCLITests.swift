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
