import Foundation
import Synchronization
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerGCP

/// The Application Default Credentials files beyond a service account's key — a user's login,
/// an impersonated service account, workload identity federation — each against google-auth
/// given the same file, and against the fake Cloud KMS's real checks.
@Suite("Google credential files, agreeing with google-auth", .tags(.gcp))
struct GoogleCredentialFileTests {
    let context: EncryptionContext = ["purpose": "credentials"]

    /// What google-auth takes from `file` and whether its token reaches the key; then DBKey's
    /// credentials from the same file, whose summary must contain `summary`, wrapping and
    /// unwrapping a key.
    func expectBoth(_ file: String, googleAuth type: String, summary: String, in directory: TemporaryDirectory)
        async throws
    {
        let environment = ["GOOGLE_APPLICATION_CREDENTIALS": file, "HOME": directory.path]
        let kekId = try await FakeCloudKms.createKey()
        let google = try await FakeCloudKms.googleAuth(environment, key: kekId)
        #expect(google.type == type && google.status == 200, "\(google)")
        let credentials = try GoogleCredentials.fromEnvironment(ProviderEnvironment(environment))
        #expect(credentials.summary.contains(summary), "\(credentials.summary)")
        let kms = try FakeCloudKms.provider(credentials: credentials)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
    }

    @Test("authorized_user: the refresh token gcloud's login writes; a revoked one is refused without showing it")
    func authorizedUser() async throws {
        let directory = try TemporaryDirectory()
        let user = try await FakeCloudKms.user(in: directory)
        try await expectBoth(
            user.path, googleAuth: "google.oauth2.credentials.Credentials", summary: "user credentials",
            in: directory)

        // The same file with a refresh token the fake never issued.
        var text = try String(contentsOfFile: user.path, encoding: .utf8)
        let refresh = try #require(
            (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])?["refresh_token"] as? String)
        text = text.replacingOccurrences(of: refresh, with: "1//0revoked-" + refresh.suffix(8))
        let revoked = directory.file("revoked.json")
        _ = FileManager.default.createFile(
            atPath: revoked, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        let error = await expectError(.kmsAccessDenied, containing: ["invalid_grant", "user credentials"]) {
            _ = try await FakeCloudKms.provider(credentials: try GoogleCredentials.credentialFile(revoked))
                .generateDataKey(kekId: try await FakeCloudKms.createKey(), context: context)
        }
        #expect(error?.message.contains("revoked-") == false && error?.message.contains(refresh) == false)
    }

    /// Keeps the `x-goog-user-project` header of each request to Cloud KMS.
    final class QuotaProjectRecorder: KmsTransport {
        let seen = Mutex<[String?]>([])

        func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
            if request.url.path.hasPrefix("/v1/projects/") {
                let value = request.headers.first { $0.name.lowercased() == "x-goog-user-project" }?.value
                seen.withLock { $0.append(value) }
            }
            return try await URLSessionKmsTransport().send(request, timeout: timeout)
        }
    }

    @Test(
        "quota_project_id: the file's, or GOOGLE_CLOUD_QUOTA_PROJECT over it, goes with each Cloud KMS request as google-auth sends it"
    )
    func quotaProject() async throws {
        let directory = try TemporaryDirectory()
        let user = try await FakeCloudKms.user(in: directory)
        var document = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: user.path))) as? [String: Any])
        document["quota_project_id"] = "dbkey-billing"
        let path = directory.file("with-quota.json")
        _ = FileManager.default.createFile(
            atPath: path, contents: try JSONSerialization.data(withJSONObject: document),
            attributes: [.posixPermissions: 0o600])
        let kekId = try await FakeCloudKms.createKey()
        for (overridden, expected) in [(nil as String?, "dbkey-billing"), ("dbkey-override", "dbkey-override")] {
            var environment = ["GOOGLE_APPLICATION_CREDENTIALS": path, "HOME": directory.path]
            environment["GOOGLE_CLOUD_QUOTA_PROJECT"] = overridden
            let google = try await FakeCloudKms.googleAuth(environment, key: kekId)
            #expect(google.status == 200 && google.quotaProject == expected, "\(google)")
            let credentials = try GoogleCredentials.fromEnvironment(ProviderEnvironment(environment))
            #expect(credentials.quotaProject == expected)
            let recorder = QuotaProjectRecorder()
            let kms = try FakeCloudKms.provider(credentials: credentials, transport: recorder)
            let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
            #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
            let seen = recorder.seen.withLock { $0 }
            #expect(!seen.isEmpty && seen.allSatisfy { $0 == expected }, "\(seen)")
        }
        // Without one, no header: the credentials' own project is billed.
        let plain = QuotaProjectRecorder()
        let kms = try FakeCloudKms.provider(
            credentials: try GoogleCredentials.credentialFile(user.path), transport: plain)
        _ = try await kms.generateDataKey(kekId: kekId, context: context)
        let seen = plain.seen.withLock { $0 }
        #expect(!seen.isEmpty && seen.allSatisfy { $0 == nil }, "\(seen)")
    }

    @Test(
        "impersonated_service_account: a service account's key or a user's login as the source; a source not allowed is refused naming the account",
        arguments: ["service_account", "authorized_user"])
    func impersonated(sourceKind: String) async throws {
        let directory = try TemporaryDirectory()
        let (sourcePath, principal): (String, String)
        if sourceKind == "service_account" {
            let path = try await FakeCloudKms.serviceAccount(permissions: [], in: directory)
            let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path)))
            (sourcePath, principal) = (path, try #require((object as? [String: Any])?["client_email"] as? String))
        } else {
            (sourcePath, principal) = try await FakeCloudKms.user(in: directory)
        }
        let target = try await FakeCloudKms.impersonationTarget(sources: [principal])
        func file(_ account: String) throws -> String {
            let source = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: sourcePath)))
            let document: [String: Any] = [
                "type": "impersonated_service_account", "delegates": [String](), "source_credentials": source,
                "service_account_impersonation_url":
                    "\(try FakeCloudKms.value("ENDPOINT"))/v1/projects/-/serviceAccounts/\(account):generateAccessToken",
            ]
            let path = directory.file("impersonated-\(account.prefix(12)).json")
            _ = FileManager.default.createFile(
                atPath: path, contents: try JSONSerialization.data(withJSONObject: document),
                attributes: [.posixPermissions: 0o600])
            return path
        }
        try await expectBoth(
            try file(target), googleAuth: "google.auth.impersonated_credentials.Credentials",
            summary: "service account \(target), impersonated with", in: directory)

        let forbidden = try await FakeCloudKms.impersonationTarget(sources: [])
        await expectError(.kmsAccessDenied, containing: [forbidden, "getAccessToken"]) {
            _ = try await FakeCloudKms.provider(credentials: try GoogleCredentials.credentialFile(try file(forbidden)))
                .generateDataKey(kekId: try await FakeCloudKms.createKey(), context: context)
        }
    }

    @Test(
        "external_account: a subject token from a file or a URL, text or JSON, exchanged at STS, with or without impersonation",
        arguments: [("file", "text", false), ("file", "json", false), ("url", "json", false), ("url", "text", true)])
    func externalAccount(source: String, format: String, impersonate: Bool) async throws {
        let directory = try TemporaryDirectory()
        let target = impersonate ? try await FakeCloudKms.impersonationTarget(sources: []) : nil
        let pool = try await FakeCloudKms.pool(
            subject: "system:serviceaccount:tenants:dbkey", format: format, impersonate: target, in: directory)
        let config = source == "file" ? pool.fileConfig : pool.urlConfig
        // A workload identity configuration holds no secret: Kubernetes mounts it readable.
        #expect(try FileManager.default.attributesOfItem(atPath: config)[.posixPermissions] as? Int == 0o644)
        try await expectBoth(
            config, googleAuth: "google.auth.identity_pool.Credentials", summary: "workload identity federation",
            in: directory)
    }

    @Test("external_account: a subject token for another subject is refused, naming the source, never the token")
    func externalAccountRefused() async throws {
        let directory = try TemporaryDirectory()
        let pool = try await FakeCloudKms.pool(
            subject: "system:serviceaccount:tenants:dbkey", tokenSubject: "system:serviceaccount:other:app",
            in: directory)
        let error = await expectError(.kmsAccessDenied, containing: ["workload identity federation", pool.audience]) {
            _ = try await FakeCloudKms.provider(credentials: try GoogleCredentials.credentialFile(pool.fileConfig))
                .generateDataKey(kekId: try await FakeCloudKms.createKey(), context: context)
        }
        let token = try String(contentsOfFile: pool.tokenFile, encoding: .utf8)
        #expect(error?.message.contains(token.prefix(30)) == false)
        // A subject token URL that refuses (its header left out) and a subject token file that
        // is gone: access denied, naming the source.
        var config =
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: pool.urlConfig)))
            as? [String: Any] ?? [:]
        var source = config["credential_source"] as? [String: Any] ?? [:]
        source["headers"] = [String: String]()
        config["credential_source"] = source
        let headerless = directory.file("headerless.json")
        _ = FileManager.default.createFile(
            atPath: headerless, contents: try JSONSerialization.data(withJSONObject: config))
        await expectError(.kmsAccessDenied, containing: ["subject token URL", "HTTP 403"]) {
            _ = try await FakeCloudKms.provider(credentials: try GoogleCredentials.credentialFile(headerless))
                .generateDataKey(kekId: try await FakeCloudKms.createKey(), context: context)
        }
        try FileManager.default.removeItem(atPath: pool.tokenFile)
        await expectError(.kmsAccessDenied, containing: ["subject token file", pool.tokenFile]) {
            _ = try await FakeCloudKms.provider(credentials: try GoogleCredentials.credentialFile(pool.fileConfig))
                .generateDataKey(kekId: try await FakeCloudKms.createKey(), context: context)
        }
        // A credential_source DBKey does not read is refused when the file is read.
        let aws = directory.file("aws.json")
        _ = FileManager.default.createFile(
            atPath: aws,
            contents: Data(
                #"{"type": "external_account", "audience": "a", "subject_token_type": "t", "credential_source": {"environment_id": "aws1"}}"#
                    .utf8))
        await expectError(.invalidConfiguration, containing: ["aws1", "a file or a URL"]) {
            _ = try GoogleCredentials.credentialFile(aws)
        }
    }
}
