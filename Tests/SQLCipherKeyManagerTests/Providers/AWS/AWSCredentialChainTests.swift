import Crypto
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAWS

/// The AWS credential chain, source by source, against boto3 given the same environment.
@Suite("AWS credential chain, agreeing with boto3", .tags(.aws))
struct AWSCredentialChainTests {
    /// One environment to resolve, and the source botocore names for it.
    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let method: String
        /// Whether each resolution makes new credentials (STS), so that only the source and the
        /// presence of a session token can be compared.
        let freshEachTime: Bool
        let environment: @Sendable (TemporaryDirectory) async throws -> [String: String]

        var testDescription: String { name }
    }

    static func value(_ name: String) throws -> String {
        try scriptVariable(name, describing: "AWS credential endpoints")
    }

    /// Writes `text` to `path` with `mode`, through a descriptor that closes on exec: a process
    /// another test starts meanwhile must not inherit it, or running a script written here fails
    /// with ETXTBSY (text file busy) while that process lives.
    static func write(_ text: String, to path: String, mode: Int = 0o600) {
        do {
            let descriptor = try FileDescriptor.open(
                FilePath(path), .writeOnly, options: [.create, .truncate, .closeOnExec],
                permissions: FilePermissions(rawValue: CModeT(mode)))
            try descriptor.closeAfter {
                _ = try descriptor.writeAll(Array(text.utf8))
                // The mode of a file that was already there.
                _ = try valueOrErrno { fchmod(descriptor.rawValue, mode_t(mode)) }
            }
        } catch {
            Issue.record("cannot write \(path): \(error)")
        }
    }

    static func webIdentity(_ directory: TemporaryDirectory) throws -> [String: String] {
        let token = directory.file("web-identity-token")
        // Kubernetes projects the token readable by the pod: the key-file checks do not apply.
        write(
            "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwOmRia2V5In0.c2ln\n", to: token,
            mode: 0o644)
        return [
            "AWS_WEB_IDENTITY_TOKEN_FILE": token, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/dbkey-web",
            "AWS_ENDPOINT_URL_STS": try value("DBKEY_TEST_STS_ENDPOINT"), "AWS_REGION": "us-east-1",
        ]
    }

    static func sharedFiles(_ directory: TemporaryDirectory, credentials: Bool, process: Bool, config: Bool) -> [String:
        String]
    {
        let credentialsFile = directory.file("credentials")
        let configFile = directory.file("config")
        if credentials {
            write(
                "[default]\naws_access_key_id = AKIASHARED000001\naws_secret_access_key = shared-secret\n",
                to: credentialsFile)
        }
        var configText = "[default]\nregion = us-east-1\n"
        if process {
            let script = directory.file("credential-process")
            write(
                "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"ASIAPROCESS00001\", \"SecretAccessKey\": \"process-secret\", \"SessionToken\": \"process-token\", \"Expiration\": \"2099-01-01T00:00:00Z\"}'\n",
                to: script, mode: 0o700)
            configText += "credential_process = \"\(script)\" --profile default\n"
        }
        if config {
            configText += "aws_access_key_id = AKIACONFIG000001\naws_secret_access_key = config-secret\n"
        }
        write(configText, to: configFile)
        return ["AWS_SHARED_CREDENTIALS_FILE": credentialsFile, "AWS_CONFIG_FILE": configFile]
    }

    /// Profiles that assume roles, as `aws configure` writes them: `app` assumes a role with
    /// `source`, which is `base`'s keys or another role `middle` (with `base`'s keys), or a
    /// `credential_source`; STS is the test's moto server.
    static func assumedRole(
        _ directory: TemporaryDirectory, source: String, chained: Bool = false, extra: String = ""
    ) throws -> [String: String] {
        let credentialsFile = directory.file("credentials")
        let configFile = directory.file("config")
        write(
            "[base]\naws_access_key_id = AKIABASE00000001\naws_secret_access_key = base-secret\n", to: credentialsFile)
        var config = """
            [profile app]
            region = us-east-1
            role_arn = arn:aws:iam::123456789012:role/app
            \(source)
            \(extra)

            """
        if chained {
            config += """
                [profile middle]
                role_arn = arn:aws:iam::123456789012:role/middle
                source_profile = base

                """
        }
        write(config, to: configFile)
        return [
            "AWS_SHARED_CREDENTIALS_FILE": credentialsFile, "AWS_CONFIG_FILE": configFile, "AWS_PROFILE": "app",
            "AWS_ENDPOINT_URL_STS": try value("DBKEY_TEST_STS_ENDPOINT"), "AWS_REGION": "us-east-1",
        ]
    }

    static let cases: [Case] = [
        Case(name: "environment", method: "env", freshEachTime: false) { directory in
            ["AWS_ACCESS_KEY_ID": "AKIAENVIRONMENT01", "AWS_SECRET_ACCESS_KEY": "env-secret"]
                .merging(try webIdentity(directory)) { a, _ in a }
        },
        Case(
            name: "assumed role with a source profile's keys, before web identity", method: "assume-role",
            freshEachTime: true
        ) { directory in
            try assumedRole(directory, source: "source_profile = base").merging(try webIdentity(directory)) { a, _ in a
            }
        },
        Case(name: "assumed role through another assumed role", method: "assume-role", freshEachTime: true) {
            directory in
            try assumedRole(
                directory, source: "source_profile = middle", chained: true,
                extra: "external_id = dbkey-tenant-7\nduration_seconds = 3600\nrole_session_name = dbkey-test")
        },
        Case(name: "assumed role with the container's credentials", method: "assume-role", freshEachTime: true) {
            directory in
            try assumedRole(directory, source: "credential_source = EcsContainer").merging([
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": try value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
                    + "/container/credentials",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": try value("DBKEY_TEST_AWS_CONTAINER_AUTHORIZATION"),
            ]) { a, _ in a }
        },
        Case(name: "assumed role with the instance's credentials", method: "assume-role", freshEachTime: true) {
            directory in
            try assumedRole(directory, source: "credential_source = Ec2InstanceMetadata").merging([
                "AWS_EC2_METADATA_SERVICE_ENDPOINT": try value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
            ]) { a, _ in a }
        },
        Case(
            name: "assumed role with an IAM Identity Center source profile", method: "assume-role", freshEachTime: true
        ) { directory in
            try await AWSSSOTests.signedIn(directory, expiresIn: 3600)
            let endpoint = try value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
            return try assumedRole(
                directory, source: "source_profile = corp-sso", extra: AWSSSOTests.profile("corp-sso")
            )
            .merging(["AWS_ENDPOINT_URL_SSO": endpoint, "AWS_ENDPOINT_URL_SSO_OIDC": endpoint]) { a, _ in a }
        },
        Case(
            name: "IAM Identity Center, before the shared credentials file",
            method: "sso", freshEachTime: false
        ) { directory in
            try await AWSSSOTests.signedIn(directory, expiresIn: 3600)
            return try AWSSSOTests.environment(directory, keysToo: true)
        },
        Case(name: "IAM Identity Center, a legacy profile", method: "sso", freshEachTime: false) { directory in
            try await AWSSSOTests.signedIn(directory, expiresIn: 3600, legacy: true)
            return try AWSSSOTests.environment(directory, legacy: true)
        },
        Case(
            name: "web identity, before the shared credentials file", method: "assume-role-with-web-identity",
            freshEachTime: true
        ) {
            directory in
            try webIdentity(directory).merging(sharedFiles(directory, credentials: true, process: true, config: true)) {
                a, _ in a
            }
        },
        Case(
            name: "shared credentials file, before credential_process", method: "shared-credentials-file",
            freshEachTime: false
        ) {
            directory in sharedFiles(directory, credentials: true, process: true, config: true)
        },
        Case(name: "credential_process, before the config file's keys", method: "custom-process", freshEachTime: false)
        {
            directory in sharedFiles(directory, credentials: false, process: true, config: true)
        },
        Case(name: "config file", method: "config-file", freshEachTime: false) { directory in
            sharedFiles(directory, credentials: false, process: false, config: true)
        },
        Case(name: "container endpoint with a token", method: "container-role", freshEachTime: false) { _ in
            [
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": try value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
                    + "/container/credentials",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN": try value("DBKEY_TEST_AWS_CONTAINER_AUTHORIZATION"),
            ]
        },
        Case(name: "container endpoint with a token file", method: "container-role", freshEachTime: false) {
            directory in
            let file = directory.file("container-token")
            write(try value("DBKEY_TEST_AWS_CONTAINER_AUTHORIZATION"), to: file, mode: 0o644)
            return [
                "AWS_CONTAINER_CREDENTIALS_FULL_URI": try value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
                    + "/container/credentials",
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": file,
            ]
        },
        Case(name: "instance metadata (IMDSv2)", method: "iam-role", freshEachTime: false) { _ in
            ["AWS_EC2_METADATA_SERVICE_ENDPOINT": try value("DBKEY_TEST_AWS_METADATA_ENDPOINT")]
        },
    ]

    /// botocore's name for a source.
    static func method(_ source: AWSCredentialProvider.Source, environment: [String: String]) -> String {
        switch source {
        case .fixed: environment["AWS_ACCESS_KEY_ID"] != nil ? "env" : "file"
        case .webIdentity: "assume-role-with-web-identity"
        case .assumeRole: "assume-role"
        case .sso: "sso"
        case .process: "custom-process"
        case .container: "container-role"
        case .instanceMetadata: "iam-role"
        }
    }

    /// What boto3 resolves in `environment` (Scripts/interop/aws_credentials.py): botocore's name
    /// for the source, the access key, the secret key's SHA-256, whether there is a token.
    static func boto3(_ environment: [String: String]) async throws -> [String: Any] {
        let python = try requireTool("python3", installedBy: "python3")
        var variables = environment
        variables["PATH"] = ProcessInfo.processInfo.environment["PATH"]
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/aws_credentials.py"], environment: variables)
        #expect(result.status == 0, "\(result.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
    }

    @Test("each source resolves to what boto3 resolves in the same environment", arguments: cases)
    func agreesWithBoto3(source: Case) async throws {
        let directory = try TemporaryDirectory()
        var environment = try await source.environment(directory)
        environment["HOME"] = directory.path
        let boto3 = try await Self.boto3(environment)
        #expect(boto3["method"] as? String == source.method)

        let provider = try AWSEnvironment(variables: ProviderEnvironment(environment)).credentialProvider(
            region: "us-east-1")
        let ours = Self.method(provider.source, environment: environment)
        #expect(
            ours == source.method
                || (ours == "file" && ["shared-credentials-file", "config-file"].contains(source.method)))
        let client = KmsHTTPClient(transport: URLSessionKmsTransport(), retry: RetryPolicy(), logger: silentLogger)
        let credentials = try await provider.current(client)
        #expect((credentials.sessionToken != nil) == (boto3["token"] as? Bool == true))
        if !source.freshEachTime {
            #expect(credentials.accessKeyId == boto3["access_key"] as? String)
            let digest = SHA256.hash(data: credentials.secretAccessKey.withUnsafeBytes { Data($0) })
                .map { String(format: "%02x", $0) }.joined()
            #expect(digest == boto3["secret_sha256"] as? String)
        } else {
            #expect(
                credentials.accessKeyId.hasPrefix("ASIA") && (boto3["access_key"] as? String)?.hasPrefix("ASIA") == true
            )
        }
        let secret = credentials.secretAccessKey.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        #expect(!credentials.description.contains(secret), "the description shows the secret key")
    }

    @Test("temporary credentials are fetched once while they are good, and a container endpoint refuses a wrong token")
    func caching() async throws {
        let transport = CountingTransport()
        let client = KmsHTTPClient(transport: transport, retry: RetryPolicy(attempts: 1), logger: silentLogger)
        let endpoint = try Self.value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
        let imds = try AWSEnvironment(variables: [
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": endpoint, "HOME": "/nonexistent",
        ])
        .credentialProvider(region: nil)
        let first = try await imds.current(client)
        let second = try await imds.current(client)
        #expect(first.accessKeyId == second.accessKeyId)
        #expect(transport.count("/latest/api/token") == 1, "one IMDSv2 session for both")
        let wrong = try AWSEnvironment(variables: [
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": endpoint + "/container/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong", "HOME": "/nonexistent",
        ]).credentialProvider(region: nil)
        await expectError(.kmsAccessDenied, containing: ["HTTP 401"]) { _ = try await wrong.current(client) }
        await expectError(.invalidConfiguration, containing: ["AWS_CONTAINER_CREDENTIALS_FULL_URI"]) {
            _ = try AWSEnvironment(variables: ["AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://10.0.0.1/creds"])
                .credentialProvider(region: nil)
        }
        let absent = try AWSEnvironment(variables: [
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9", "HOME": "/nonexistent",
        ])
        .credentialProvider(region: nil)
        let probing = CountingTransport()
        let retrying = KmsHTTPClient(transport: probing, retry: RetryPolicy(attempts: 3), logger: silentLogger)
        await expectError(.kmsAccessDenied, containing: ["No AWS credentials", "instance metadata service"]) {
            _ = try await absent.current(retrying)
        }
        #expect(probing.count("/latest/api/token") == 1, "no retries when no IMDS answers")
    }

    @Test("temporary credentials are used while good for 15 more minutes and fetched again after")
    func refreshBeforeExpiry() async throws {
        let directory = try TemporaryDirectory()
        let counter = directory.file("count")
        let client = KmsHTTPClient(transport: URLSessionKmsTransport(), retry: RetryPolicy(), logger: silentLogger)
        for (minutes, expectedKeys) in [(10, 2), (60, 1)] {
            Self.write("0", to: counter)
            let script = directory.file("process-\(minutes)")
            let expiry = ISO8601DateFormatter().string(from: Date(timeIntervalSinceNow: Double(minutes) * 60))
            Self.write(
                "#!/bin/sh\nn=$(($(cat \(counter)) + 1)); echo $n > \(counter)\necho \"{\\\"Version\\\": 1, \\\"AccessKeyId\\\": \\\"ASIAPROCESS$n\\\", \\\"SecretAccessKey\\\": \\\"s$n\\\", \\\"SessionToken\\\": \\\"t$n\\\", \\\"Expiration\\\": \\\"\(expiry)\\\"}\"\n",
                to: script, mode: 0o700)
            let provider = AWSCredentialProvider(source: .process(command: script))
            let first = try await provider.current(client)
            let second = try await provider.current(client)
            #expect(
                Set([first.accessKeyId, second.accessKeyId]).count == expectedKeys, "expiring in \(minutes) minutes")
            #expect(first.sessionToken == "t1")
        }
    }

    @Test("a refused AssumeRoleWithWebIdentity is access denied naming the role, without the token")
    func webIdentityRefused() async throws {
        let directory = try TemporaryDirectory()
        var environment = try Self.webIdentity(directory)
        // An endpoint that is not STS: it answers 404, as STS answers a call it refuses with 4xx.
        environment["AWS_ENDPOINT_URL_STS"] = try Self.value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
        environment["HOME"] = directory.path
        let provider = try AWSEnvironment(variables: ProviderEnvironment(environment)).credentialProvider(
            region: "us-east-1")
        let client = KmsHTTPClient(transport: URLSessionKmsTransport(), retry: RetryPolicy(), logger: silentLogger)
        let error = await expectError(
            .kmsAccessDenied, containing: ["AssumeRoleWithWebIdentity", "dbkey-web", "HTTP 404"]
        ) {
            _ = try await provider.current(client)
        }
        let token = try String(contentsOfFile: directory.file("web-identity-token"), encoding: .utf8)
        #expect(error?.message.contains(token.trimmingCharacters(in: .whitespacesAndNewlines)) == false)
    }

    @Test("credential_process output is split without a shell, and a failing process is access denied")
    func credentialProcess() async throws {
        #expect(
            CredentialProcess.split(#"/opt/bin/creds --profile "my profile" 'a b' c\ d"#) == [
                "/opt/bin/creds", "--profile", "my profile", "a b", "c d",
            ])
        let directory = try TemporaryDirectory()
        let script = directory.file("fails")
        Self.write("#!/bin/sh\necho '{\"SecretAccessKey\": \"leaked\"}'\nexit 3\n", to: script, mode: 0o700)
        let provider = AWSCredentialProvider(source: .process(command: script))
        let client = KmsHTTPClient(transport: URLSessionKmsTransport(), retry: RetryPolicy(), logger: silentLogger)
        let error = await expectError(.kmsAccessDenied, containing: ["exited with 3"]) {
            _ = try await provider.current(client)
        }
        #expect(error?.message.contains("leaked") == false)
    }

    /// Records each STS request's form and the access key that signed it.
    final class STSRecorder: KmsTransport {
        let calls = Mutex<[(form: [String: String], accessKey: String)]>([])

        func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
            let form = Dictionary(
                uniqueKeysWithValues: String(decoding: request.body, as: UTF8.self).split(separator: "&").map {
                    let pair = $0.split(separator: "=", maxSplits: 1).map { String($0).removingPercentEncoding ?? "" }
                    return (pair[0], pair.count > 1 ? pair[1] : "")
                })
            let authorization = request.headers.first { $0.name == "Authorization" }?.value ?? ""
            let accessKey = authorization.components(separatedBy: "Credential=").last?.split(separator: "/").first
            calls.withLock { $0.append((form, accessKey.map(String.init) ?? "")) }
            return try await URLSessionKmsTransport().send(request, timeout: timeout)
        }
    }

    @Test(
        "a chained role: each AssumeRole signed with the credentials before it, with the profile's external_id, duration and session name"
    )
    func chainedAssumeRole() async throws {
        let directory = try TemporaryDirectory()
        var environment = try Self.assumedRole(
            directory, source: "source_profile = middle", chained: true,
            extra: "external_id = dbkey-tenant-7\nduration_seconds = 3600\nrole_session_name = dbkey-test")
        environment["HOME"] = directory.path
        let provider = try AWSEnvironment(variables: ProviderEnvironment(environment)).credentialProvider(
            region: "us-east-1")
        let recorder = STSRecorder()
        let client = KmsHTTPClient(transport: recorder, retry: RetryPolicy(), logger: silentLogger)
        let credentials = try await provider.current(client)
        let calls = recorder.calls.withLock { $0 }
        guard calls.count == 2 else {
            Issue.record("\(calls.count) AssumeRole calls, not 2")
            return
        }
        #expect(
            calls[0].form["Action"] == "AssumeRole"
                && calls[0].form["RoleArn"] == "arn:aws:iam::123456789012:role/middle")
        #expect(calls[0].accessKey == "AKIABASE00000001" && calls[0].form["ExternalId"] == nil)
        #expect(calls[1].form["RoleArn"] == "arn:aws:iam::123456789012:role/app")
        #expect(calls[1].accessKey.hasPrefix("ASIA") && calls[1].accessKey != credentials.accessKeyId)
        #expect(calls[1].form["ExternalId"] == "dbkey-tenant-7" && calls[1].form["DurationSeconds"] == "3600")
        #expect(calls[1].form["RoleSessionName"] == "dbkey-test")
        #expect(credentials.accessKeyId.hasPrefix("ASIA") && credentials.sessionToken != nil)
        // Cached while good: no third call.
        _ = try await provider.current(client)
        #expect(recorder.calls.withLock { $0.count } == 2)
        #expect(provider.summary.contains("role/app") && provider.summary.contains("role/middle"))
    }

    @Test(
        "profiles that assume a role in a way DBKey cannot follow are refused with the reason",
        arguments: [
            ("source_profile = base\nmfa_serial = arn:aws:iam::123456789012:mfa/ops", "cannot ask for a code"),
            ("source_profile = base\ncredential_source = Environment", "both source_profile and credential_source"),
            ("", "no source_profile or credential_source"),
            ("source_profile = nowhere", "\"nowhere\""),
            ("source_profile = base\nduration_seconds = 60", "900 to 43200"),
            ("credential_source = Lambda", "Environment, Ec2InstanceMetadata or EcsContainer"),
            ("source_profile = loop", "loop"),
        ])
    func refusedProfiles(profile: String, reason: String) throws {
        let directory = try TemporaryDirectory()
        var environment = try Self.assumedRole(directory, source: profile)
        // A profile that sends the chain back to app.
        let config = try String(contentsOfFile: environment["AWS_CONFIG_FILE"]!, encoding: .utf8)
        Self.write(
            config + "\n[profile loop]\nrole_arn = arn:aws:iam::123456789012:role/loop\nsource_profile = app\n",
            to: environment["AWS_CONFIG_FILE"]!)
        environment["HOME"] = directory.path
        let thrown = #expect(throws: DBKeyError.self) {
            _ = try AWSEnvironment(variables: ProviderEnvironment(environment)).credentialProvider(region: "us-east-1")
        }
        #expect(
            thrown?.code == .invalidConfiguration && thrown?.message.contains(reason) == true,
            "\(thrown?.message ?? "")")
        #expect(thrown?.message.contains("base-secret") == false)
    }

    @Test("a refused AssumeRole is access denied naming the role and the source, never the source's secret")
    func assumeRoleRefused() async throws {
        let directory = try TemporaryDirectory()
        var environment = try Self.assumedRole(directory, source: "source_profile = base")
        environment["HOME"] = directory.path
        let provider = try AWSEnvironment(variables: ProviderEnvironment(environment)).credentialProvider(
            region: "us-east-1")
        let transport = ScriptedTransport([
            .status(
                403,
                "<ErrorResponse><Error><Code>AccessDenied</Code><Message>User is not authorized to perform: sts:AssumeRole</Message></Error></ErrorResponse>"
            )
        ])
        let client = KmsHTTPClient(transport: transport, retry: RetryPolicy(), logger: silentLogger)
        let error = await expectError(
            .kmsAccessDenied, containing: ["AssumeRole", "role/app", "AKIABASE00000001", "trust policy"]
        ) { _ = try await provider.current(client) }
        #expect(error?.message.contains("base-secret") == false)
    }
}
