import Crypto
import Foundation
import Synchronization
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAWS

/// IAM Identity Center (AWS SSO) profiles against Scripts/fakes/aws_metadata.py's portal and
/// OIDC service, with boto3 reading and writing the same token cache.
@Suite("AWS IAM Identity Center sign-ins", .tags(.aws))
struct AWSSSOTests: FakeKmsServer {
    static func adminURL() throws -> URL {
        try #require(URL(string: try scriptVariable("DBKEY_TEST_AWS_METADATA_ENDPOINT", describing: "AWS endpoints")))
    }

    static func adminToken() throws -> String {
        try scriptVariable("DBKEY_TEST_AWS_METADATA_ADMIN_TOKEN", describing: "AWS endpoints")
    }

    static let startURL = "https://dbkey-test.awsapps.com/start"

    /// A profile `name` that signs in through the sso-session `corp`, and that session, as
    /// `aws configure sso` writes them; `legacy` puts the start URL and region in the profile.
    static func profile(_ name: String, legacy: Bool = false) -> String {
        let section = name == "default" ? "[default]" : "[profile \(name)]"
        if legacy {
            return """
                \(section)
                sso_start_url = \(startURL)
                sso_region = us-east-1
                sso_account_id = 123456789012
                sso_role_name = dbkey-legacy

                """
        }
        return """
            \(section)
            sso_session = corp
            sso_account_id = 123456789012
            sso_role_name = dbkey-app
            region = us-east-1

            [sso-session corp]
            sso_start_url = \(startURL)
            sso_region = us-east-1
            sso_registration_scopes = sso:account:access

            """
    }

    /// The environment of a profile `app` that signs in with IAM Identity Center; with
    /// `keysToo`, the credentials file has keys for it as well (which botocore takes after the
    /// sign-in).
    static func environment(_ directory: TemporaryDirectory, keysToo: Bool = false, legacy: Bool = false) throws
        -> [String: String]
    {
        let config = directory.file("config")
        AWSCredentialChainTests.write(profile("app", legacy: legacy), to: config)
        let credentials = directory.file("credentials")
        if keysToo {
            AWSCredentialChainTests.write(
                "[app]\naws_access_key_id = AKIASHARED000001\naws_secret_access_key = shared-secret\n", to: credentials)
        }
        let endpoint = try AWSCredentialChainTests.value("DBKEY_TEST_AWS_METADATA_ENDPOINT")
        return [
            "AWS_CONFIG_FILE": config, "AWS_SHARED_CREDENTIALS_FILE": credentials, "AWS_PROFILE": "app",
            "AWS_ENDPOINT_URL_SSO": endpoint, "AWS_ENDPOINT_URL_SSO_OIDC": endpoint, "AWS_REGION": "us-east-1",
            "HOME": directory.path,
        ]
    }

    /// The token cache file of the session `corp` (or of the start URL, for a legacy profile)
    /// under `directory` as the home directory.
    static func cacheFile(_ directory: TemporaryDirectory, legacy: Bool = false) -> String {
        let name = legacy ? startURL : "corp"
        let digest = Insecure.SHA1.hash(data: Data(name.utf8)).map { String(format: "%02x", $0) }.joined()
        return directory.path + "/.aws/sso/cache/\(digest).json"
    }

    static func iso(_ date: Date) -> String { ISO8601DateFormatter().string(from: date) }

    /// Does what `aws sso login` does: the fake registers a client and issues tokens, written to
    /// the cache as the AWS CLI writes them (mode 0600). `expiresAt` may be set apart from the
    /// token's real life (to make a live token look expired). Returns the fake's answer.
    @discardableResult
    static func signedIn(
        _ directory: TemporaryDirectory, expiresIn: Double, legacy: Bool = false, expiresAt: Date? = nil,
        refreshToken: String? = nil
    ) async throws -> [String: Any] {
        let login = try await admin("sso-login", ["expires_in": expiresIn])
        var entry: [String: Any] = [
            "startUrl": startURL, "region": "us-east-1", "accessToken": try #require(login["accessToken"] as? String),
            "expiresAt": iso(expiresAt ?? Date(timeIntervalSinceNow: expiresIn)),
        ]
        if !legacy {
            entry["clientId"] = login["clientId"]
            entry["clientSecret"] = login["clientSecret"]
            entry["refreshToken"] = refreshToken ?? login["refreshToken"]
            entry["registrationExpiresAt"] = iso(Date(timeIntervalSinceNow: 90 * 86_400))
        }
        let path = cacheFile(directory, legacy: legacy)
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        AWSCredentialChainTests.write(
            String(decoding: try JSONSerialization.data(withJSONObject: entry), as: UTF8.self), to: path)
        return login
    }

    static func cached(_ directory: TemporaryDirectory) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: cacheFile(directory)))
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// The token refreshes and role credential requests of the sign-in `login`'s client.
    static func counts(_ login: [String: Any]) async throws -> (refreshes: Int, roleCredentials: Int) {
        let answer = try await admin("sso-counts", ["clientId": try #require(login["clientId"] as? String)])
        return (try #require(answer["token"] as? Int), try #require(answer["credentials"] as? Int))
    }

    static func provider(_ environment: [String: String]) throws -> AWSCredentialProvider {
        try AWSEnvironment(variables: ProviderEnvironment(environment)).credentialProvider(region: "us-east-1")
    }

    static let client = KmsHTTPClient(transport: URLSessionKmsTransport(), retry: RetryPolicy(), logger: silentLogger)

    @Test("a token within 15 minutes of expiring is refreshed once and written back where boto3 reads it")
    func refreshWrittenBack() async throws {
        let directory = try TemporaryDirectory()
        let login = try await Self.signedIn(directory, expiresIn: 300)
        let credentials = try await Self.provider(Self.environment(directory)).current(Self.client)
        var after = try await Self.counts(login)
        #expect(after.refreshes == 1 && after.roleCredentials == 1)

        let entry = try Self.cached(directory)
        #expect(entry["accessToken"] as? String != login["accessToken"] as? String)
        #expect(entry["refreshToken"] as? String != login["refreshToken"] as? String, "the rotated refresh token")
        #expect(entry["clientSecret"] as? String == login["clientSecret"] as? String)
        #expect(
            entry["clientId"] as? String == login["clientId"] as? String
                && entry["startUrl"] as? String == Self.startURL)
        let expiresAt = try #require((entry["expiresAt"] as? String).flatMap(SSOToken.parseDate))
        #expect(expiresAt.timeIntervalSinceNow > 50 * 60)
        let mode = try FileManager.default.attributesOfItem(atPath: Self.cacheFile(directory))[.posixPermissions]
        #expect((mode as? NSNumber)?.intValue == 0o600)

        // boto3 takes the written token as it is: no second refresh, the same role credentials.
        let boto3 = try await AWSCredentialChainTests.boto3(Self.environment(directory))
        #expect(boto3["method"] as? String == "sso" && boto3["access_key"] as? String == credentials.accessKeyId)
        after = try await Self.counts(login)
        #expect(after.refreshes == 1, "boto3 refreshed the token DBKey wrote back")
    }

    @Test("a token good for more than 15 minutes is used as it is, and the role's credentials are cached")
    func noRefreshWhileGood() async throws {
        let directory = try TemporaryDirectory()
        let login = try await Self.signedIn(directory, expiresIn: 3600)
        let provider = try Self.provider(Self.environment(directory))
        _ = try await provider.current(Self.client)
        _ = try await provider.current(Self.client)
        let after = try await Self.counts(login)
        #expect(after.refreshes == 0 && after.roleCredentials == 1)
        #expect(try Self.cached(directory)["accessToken"] as? String == login["accessToken"] as? String)
        #expect(provider.summary.contains("dbkey-app") && provider.summary.contains("123456789012"))
    }

    /// Runs `before` ahead of the first `CreateToken` request it passes on.
    final class BeforeRefresh: KmsTransport {
        let before: @Sendable () async throws -> Void
        let done = Mutex(false)

        init(_ before: @escaping @Sendable () async throws -> Void) { self.before = before }

        func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
            if request.url.path.hasSuffix("/token"), !done.withLock({ $0 }) {
                done.withLock { $0 = true }
                try await before()
            }
            return try await URLSessionKmsTransport().send(request, timeout: timeout)
        }
    }

    @Test("when another process refreshed the token first, its token is taken, not an error")
    func anotherProcessRefreshedFirst() async throws {
        let directory = try TemporaryDirectory()
        let environment = try Self.environment(directory)
        // Already expired in the cache's eyes (the fake still honours it), so only a refresh helps.
        let login = try await Self.signedIn(directory, expiresIn: 3600, expiresAt: Date(timeIntervalSinceNow: -60))
        let transport = BeforeRefresh {
            // boto3 refreshes first: it spends the refresh token DBKey is about to send.
            let boto3 = try await AWSCredentialChainTests.boto3(environment)
            #expect(boto3["method"] as? String == "sso")
        }
        let client = KmsHTTPClient(transport: transport, retry: RetryPolicy(), logger: silentLogger)
        let credentials = try await Self.provider(environment).current(client)
        #expect(credentials.accessKeyId.hasPrefix("ASIASSO"))
        let after = try await Self.counts(login)
        #expect(after.refreshes == 1, "boto3's refresh succeeded and DBKey's was refused")
        #expect(after.roleCredentials == 2, "boto3's request and DBKey's, with the token boto3 wrote")
        #expect(transport.done.withLock { $0 })
    }

    @Test("an expired or revoked sign-in is access denied with the command that signs in again, and no token")
    func expiredSignIns() async throws {
        // A legacy profile is never refreshed.
        let legacy = try TemporaryDirectory()
        let legacyLogin = try await Self.signedIn(
            legacy, expiresIn: 3600, legacy: true, expiresAt: Date(timeIntervalSinceNow: -60))
        var error = await expectError(.kmsAccessDenied, containing: ["expired", "aws sso login --profile app"]) {
            _ = try await Self.provider(Self.environment(legacy, legacy: true)).current(Self.client)
        }
        #expect(error?.message.contains(legacyLogin["accessToken"] as? String ?? "?") == false)
        let after = try await Self.counts(legacyLogin)
        #expect(after.refreshes == 0 && after.roleCredentials == 0, "no request with an expired token")

        // A session whose refresh token was spent: the refresh is refused, the token has expired.
        let spent = try TemporaryDirectory()
        let login = try await Self.signedIn(
            spent, expiresIn: 3600, expiresAt: Date(timeIntervalSinceNow: -60), refreshToken: "aor-not-issued")
        error = await expectError(
            .kmsAccessDenied,
            containing: ["could not be refreshed", "invalid_grant", "aws sso login --sso-session corp"]
        ) {
            _ = try await Self.provider(Self.environment(spent)).current(Self.client)
        }
        for secret in ["accessToken", "clientSecret"] {
            #expect(error?.message.contains(login[secret] as? String ?? "?") == false, "\(secret) in the message")
        }
        #expect(error?.message.contains("aor-not-issued") == false)

        // A token the portal does not know (signed out elsewhere).
        let revoked = try TemporaryDirectory()
        try await Self.signedIn(revoked, expiresIn: 3600)
        var entry = try Self.cached(revoked)
        entry["accessToken"] = "aoa-revoked"
        AWSCredentialChainTests.write(
            String(decoding: try JSONSerialization.data(withJSONObject: entry), as: UTF8.self),
            to: Self.cacheFile(revoked))
        error = await expectError(.kmsAccessDenied, containing: ["HTTP 401", "aws sso login --sso-session corp"]) {
            _ = try await Self.provider(Self.environment(revoked)).current(Self.client)
        }
        #expect(error?.message.contains("aoa-revoked") == false)

        // Never signed in.
        let none = try TemporaryDirectory()
        await expectError(.kmsAccessDenied, containing: ["no sign-in", "aws sso login --sso-session corp"]) {
            _ = try await Self.provider(Self.environment(none)).current(Self.client)
        }
    }

    @Test(
        "outages: an OIDC service that does not answer leaves a live token in use and the cache as it was, and an expired one kms-unavailable; a failing portal is kms-unavailable"
    )
    func outages() async throws {
        let directory = try TemporaryDirectory()
        var environment = try Self.environment(directory)
        environment["AWS_ENDPOINT_URL_SSO_OIDC"] = "http://127.0.0.1:9"
        let login = try await Self.signedIn(directory, expiresIn: 300)
        let credentials = try await Self.provider(environment).current(Self.client)
        #expect(credentials.accessKeyId.hasPrefix("ASIASSO"))
        #expect(try Self.cached(directory)["accessToken"] as? String == login["accessToken"] as? String)
        #expect(try Self.cached(directory)["refreshToken"] as? String == login["refreshToken"] as? String)

        try await Self.signedIn(directory, expiresIn: 3600, expiresAt: Date(timeIntervalSinceNow: -60))
        await expectError(.kmsUnavailable, containing: ["could not be refreshed", "aws sso login --sso-session corp"]) {
            _ = try await Self.provider(environment).current(Self.client)
        }

        // The portal answers 503 to every attempt (a path of this test's own, so that no other
        // test's request meets the injected failures).
        try await Self.signedIn(directory, expiresIn: 3600)
        environment["AWS_ENDPOINT_URL_SSO"] =
            try Self.adminURL().absoluteString + "/outage-\(UUID().uuidString.prefix(8))"
        try await Self.fail(status: 503, count: 10, path: URL(string: environment["AWS_ENDPOINT_URL_SSO"]!)!.path)
        await expectError(.kmsUnavailable, containing: ["HTTP 503", "GetRoleCredentials"]) {
            _ = try await Self.provider(environment).current(Self.client)
        }
    }

    @Test("a role the sign-in is not given is access denied naming the role and the account")
    func roleNotGiven() async throws {
        let directory = try TemporaryDirectory()
        try await Self.signedIn(directory, expiresIn: 3600)
        let environment = try Self.environment(directory)
        let config = Self.profile("app").replacingOccurrences(of: "dbkey-app", with: "admin")
        AWSCredentialChainTests.write(config, to: environment["AWS_CONFIG_FILE"]!)
        await expectError(.kmsAccessDenied, containing: ["admin", "123456789012", "HTTP 403", "permission sets"]) {
            _ = try await Self.provider(environment).current(Self.client)
        }
    }

    @Test(
        "profiles whose sign-in cannot be followed are refused with the reason",
        arguments: [
            ("sso_session = nowhere\nsso_account_id = 123456789012\nsso_role_name = dbkey-app", "\"nowhere\""),
            (
                "sso_session = corp\nsso_start_url = https://other.awsapps.com/start\nsso_account_id = 123456789012\nsso_role_name = dbkey-app",
                "keep one"
            ),
            ("sso_start_url = https://x.awsapps.com/start\nsso_account_id = 123456789012", "sso_region, sso_role_name"),
            (
                "sso_start_url = https://x.awsapps.com/start\nsso_region = us-east-1/../evil\nsso_account_id = 1\nsso_role_name = r",
                "not a region"
            ),
        ])
    func refusedProfiles(profile: String, reason: String) throws {
        let directory = try TemporaryDirectory()
        let environment = try Self.environment(directory)
        let session = "[sso-session corp]\nsso_start_url = \(Self.startURL)\nsso_region = us-east-1\n"
        AWSCredentialChainTests.write("[profile app]\n\(profile)\n\n\(session)", to: environment["AWS_CONFIG_FILE"]!)
        let thrown = #expect(throws: DBKeyError.self) { _ = try Self.provider(environment) }
        #expect(
            thrown?.code == .invalidConfiguration && thrown?.message.contains(reason) == true,
            "\(thrown?.message ?? "")")
    }
}
