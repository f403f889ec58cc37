import Foundation
import Synchronization
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAzure
@testable import SQLCipherKeyManagerGCP

/// The parts of the Cloud KMS and Key Vault providers that need no server: names, encodings,
/// token answers, endpoint rules.
@Suite("Cloud provider parts", .tags(.core))
struct CloudProviderPartsTests {
    @Test(
        "the HTTP status every provider falls back to: no answer, 429 and 5xx unavailable, 401 and 403 denied, 404 not found, the rest invalid configuration"
    )
    func httpStatusFallback() {
        let expected: [(Int, DBKeyError.Code, String?)] = [
            (0, .kmsUnavailable, "Try again later"), (429, .kmsUnavailable, "Try again later"),
            (500, .kmsUnavailable, nil), (503, .kmsUnavailable, nil), (599, .kmsUnavailable, nil),
            (401, .kmsAccessDenied, "token advice"), (403, .kmsAccessDenied, "access advice"),
            (404, .kmsKeyNotFound, "not-found advice"), (400, .invalidConfiguration, nil),
            (409, .invalidConfiguration, nil), (418, .invalidConfiguration, nil),
        ]
        for (status, code, fragment) in expected {
            let error = KmsHTTPStatus.error(
                status: status, what: "X failed with HTTP \(status)", tokenRefused: "token advice",
                accessDenied: "access advice", notFound: "not-found advice")
            #expect(error.code == code, "HTTP \(status)")
            #expect(error.message.hasPrefix("X failed with HTTP \(status)."), "HTTP \(status): \(error.message)")
            if let fragment { #expect(error.message.contains(fragment), "HTTP \(status): \(error.message)") }
        }
        // A 401 without its own advice takes the access advice.
        #expect(
            KmsHTTPStatus.error(status: 401, what: "X", accessDenied: "access advice", notFound: "n").message
                == "X. access advice")
    }

    @Test("Cloud KMS key names: the four labelled ids, domain-scoped projects, nothing else")
    func cloudKmsNames() throws {
        for valid in [
            "projects/acme/locations/global/keyRings/apps/cryptoKeys/notes-db",
            "projects/example.com:acme/locations/europe-west1/keyRings/r_1/cryptoKeys/K",
        ] {
            #expect(try CloudKmsKeyName(valid).description == valid)
        }
        for invalid in [
            "", "projects/acme", "projects/acme/locations/global/keyRings/apps/cryptoKeys/",
            "projects/acme/locations/global/keyRings/apps/cryptoKeys/k/cryptoKeyVersions/1",
            "projects/acme/locations/global/keyRing/apps/cryptoKeys/k",
            "projects/acme/locations/glo bal/keyRings/apps/cryptoKeys/k",
            "projects/acme/locations/global/keyRings/a.b/cryptoKeys/k",
        ] {
            #expect(throws: DBKeyError.self, "\(invalid)") { try CloudKmsKeyName(invalid) }
        }
        let name = try CloudKmsKeyName("projects/p/locations/l/keyRings/r/cryptoKeys/k")
        #expect(name.versionNumber(of: "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/12") == 12)
        #expect(name.versionNumber(of: "projects/p/locations/l/keyRings/r/cryptoKeys/other/cryptoKeyVersions/1") == nil)
        #expect(name.versionNumber(of: "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/0") == nil)
        let kms = try GoogleCloudKms(
            credentials: .accessToken(Passphrase.fromText("t")), endpoint: nil, retry: RetryPolicy(),
            transport: URLSessionKmsTransport(), logger: silentLogger)
        #expect(kms.kekVersion(of: WrappedDataKey(encoded: "gcpkms:v7:AAAA")) == "7")
        for malformed in ["gcpkms:v0:AAAA", "gcpkms:7:AAAA", "gcpkms:v7:", "vault:v7:AAAA", "gcpkms:v7:not base64"] {
            #expect(kms.kekVersion(of: WrappedDataKey(encoded: malformed)) == nil, "\(malformed)")
        }
    }

    @Test("Key Vault key names: HOST/keys/NAME with an optional 32-digit version, and the URLs made of them")
    func keyVaultNames() throws {
        let name = try KeyVaultKeyName("myvault.vault.azure.net/keys/app-db")
        #expect(name.host == "myvault.vault.azure.net" && name.name == "app-db" && name.version == nil)
        #expect(
            name.url("wrapkey", version: nil).absoluteString
                == "https://myvault.vault.azure.net/keys/app-db/wrapkey?api-version=\(AzureKeyVault.apiVersion)")
        let version = String(repeating: "ab", count: 16)
        let pinned = try KeyVaultKeyName("pool.managedhsm.azure.net/keys/k/\(version)")
        #expect(pinned.version == version && pinned.description == "pool.managedhsm.azure.net/keys/k/\(version)")
        #expect(pinned.url(nil, version: nil).path == "/keys/k/\(version)")
        #expect(pinned.url("unwrapkey", version: String(repeating: "cd", count: 16)).path.hasPrefix("/keys/k/cdcd"))
        for invalid in [
            "", "myvault.vault.azure.net", "myvault.vault.azure.net/secrets/k", "myvault.vault.azure.net/keys/k_1",
            "myvault.vault.azure.net/keys/k/\(version)/x", "my vault/keys/k", "/keys/k",
            "myvault.vault.azure.net/keys/k/XYZ",
        ] {
            #expect(throws: DBKeyError.self, "\(invalid)") { try KeyVaultKeyName(invalid) }
        }
        #expect(AzureKeyVault.version(ofKid: "https://v.vault.azure.net/keys/k/\(version)") == version)
        #expect(AzureKeyVault.version(ofKid: "https://v.vault.azure.net/keys/k") == nil)
    }

    @Test("form bodies percent-encode all but RFC 3986's unreserved characters, secrets included")
    func formBodies() throws {
        let secret = try Passphrase.fromText("s3cr3t+/=&%~._-")
        let body = FormBody.encode([
            ("grant_type", .text("client_credentials")), ("client_secret", .secret(secret)),
            ("scope", .text("https://v.example/.default")),
        ])
        #expect(
            body.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
                == "grant_type=client_credentials&client_secret=s3cr3t%2B%2F%3D%26%25~._-&scope=https%3A%2F%2Fv.example%2F.default"
        )
        // What Foundation decodes is what went in.
        let decoded = body.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }.split(separator: "&")[1]
            .dropFirst("client_secret=".count).removingPercentEncoding
        #expect(decoded == "s3cr3t+/=&%~._-")
    }

    @Test(
        "base64url: every length from 0 to 70 round-trips and matches Foundation's base64 with - and _",
        arguments: 0...70)
    func base64URL(length: Int) throws {
        let bytes = (0..<length).map { _ in UInt8.random(in: 0...255) }
        let expected = Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        #expect(Base64URL.encode(bytes) == expected)
        let decoded = try #require(Base64URL.decode(expected))
        #expect(decoded.withUnsafeBytes { Array($0) } == bytes)
        if !expected.isEmpty {
            #expect(Base64URL.decode(expected + "!") == nil)
        }
        #expect(Base64URL.decode("ab+/") == nil, "standard base64's characters are not base64url")
    }

    @Test(
        "a token answer: access_token into secure memory and blanked; expires_in as number or text, expires_on; not Bearer refused"
    )
    func tokenAnswers() throws {
        for (json, lifetime) in [
            (#"{"access_token": "ya29.a\/b", "expires_in": 3599, "token_type": "Bearer"}"#, 3599),
            (#"{"token_type":"Bearer","expires_in":"600","access_token":"ya29.a\/b"}"#, 600),
            (
                #"{"access_token":"ya29.a\/b","expires_on":"\#(Int(Date().timeIntervalSince1970) + 1200)","resource":"r"}"#,
                1200
            ),
        ] {
            var body = Data(json.utf8)
            let before = ContinuousClock.now
            let token = try BearerToken.taking(from: &body, issuer: "test")
            #expect(token.value.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } == "ya29.a/b")
            #expect(token.authorization == "Bearer ya29.a/b")
            let refresh = token.refreshAt - before
            let expected = Duration.seconds(lifetime) - min(.seconds(300), .seconds(lifetime) / 4)
            #expect(refresh > expected - .seconds(2) && refresh <= expected + .seconds(1), "\(refresh)")
            #expect(body.allSatisfy { $0 == 0 }, "the answer is wiped")
        }
        var mac = Data(#"{"access_token": "t", "token_type": "mac"}"#.utf8)
        #expect(throws: DBKeyError.self) { try BearerToken.taking(from: &mac, issuer: "test") }
        var none = Data(#"{"error": "invalid_grant"}"#.utf8)
        #expect(throws: DBKeyError.self) { try BearerToken.taking(from: &none, issuer: "test") }
        var expired = Data(#"{"access_token": "t", "expires_in": 0}"#.utf8)
        #expect(throws: DBKeyError.self) { try BearerToken.taking(from: &expired, issuer: "test") }
    }

    @Test("the token cache: one fetch for concurrent callers, a new one when the token is due or was refused")
    func tokenCache() async throws {
        let cache = BearerTokenCache()
        let fetches = Mutex(0)
        let fetch: @Sendable () async throws -> BearerToken = {
            let number = fetches.withLock {
                $0 += 1
                return $0
            }
            try await Task.sleep(for: .milliseconds(50))
            return BearerToken(value: try Passphrase.fromText("token-\(number)"), lifetime: .seconds(4))
        }
        let tokens = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<10 {
                group.addTask { try await cache.token(scope: "s", fetch: fetch).authorization }
            }
            return try await group.reduce(into: Set<String>()) { $0.insert($1) }
        }
        #expect(tokens == ["Bearer token-1"] && fetches.withLock { $0 } == 1)
        #expect(try await cache.token(scope: "other", fetch: fetch).authorization == "Bearer token-2")
        // Due a quarter of its lifetime (1 s) before it expires.
        try await Task.sleep(for: .milliseconds(3200))
        #expect(try await cache.token(scope: "s", fetch: fetch).authorization == "Bearer token-3")
        #expect(try await cache.token(scope: "s", fetch: fetch).authorization == "Bearer token-3")
        await cache.invalidate(scope: "s")
        #expect(try await cache.token(scope: "s", fetch: fetch).authorization == "Bearer token-4")
    }

    @Test("a JSON string taken into secure memory: escapes undone, the value blanked, \\u refused")
    func jsonText() throws {
        var body = Data(#"{"private_key": "-----BEGIN-----\nAB\/C\"D\\\n-----END-----\n", "client_email": "e"}"#.utf8)
        let value = try #require(JSONSecretField.takeText("private_key", from: &body))
        #expect(
            value.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
                == "-----BEGIN-----\nAB/C\"D\\\n-----END-----\n")
        let rest = try #require(try JSONSerialization.jsonObject(with: body) as? [String: String])
        #expect(rest["client_email"] == "e" && rest["private_key"]?.allSatisfy { $0 == "A" } == true)
        var unicode = Data(#"{"access_token": "a\u0041"}"#.utf8)
        #expect(JSONSecretField.takeText("access_token", from: &unicode) == nil)
        var missing = Data(#"{"token": "x"}"#.utf8)
        #expect(JSONSecretField.takeText("access_token", from: &missing) == nil)
    }

    @Test("a JSON object built with secret fields parses back to every value, for any bytes of text")
    func jsonObjectWithSecrets() throws {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("ab\"\\/\n\t\u{01}\u{1F} é{}:,".unicodeScalars)
        for round in 0..<200 {
            let texts = (0..<3).map { _ in
                String(
                    String.UnicodeScalarView(
                        (0..<Int.random(in: 0...12, using: &generator)).map { _ in
                            alphabet.randomElement(using: &generator)!
                        }))
            }
            let plain: [String: Any] = round.isMultiple(of: 2) ? [:] : ["clientId": texts[0], "n": round]
            let secrets = texts.enumerated().map {
                (name: "s\($0.offset)", value: Array($0.element.utf8).withUnsafeBytes { SecureBuffer(copying: $0) })
            }
            let built = try JSONSecretField.object(plain, secrets: secrets)
            let data = built.withUnsafeBytes { Data($0) }
            let parsed = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
            #expect(parsed.count == plain.count + 3)
            for (offset, text) in texts.enumerated() { #expect(parsed["s\(offset)"] as? String == text, "\(texts)") }
            if !plain.isEmpty { #expect(parsed["clientId"] as? String == texts[0] && parsed["n"] as? Int == round) }
        }
    }

    @Test(
        "a credential command: both outputs read whole, stopped at its timeout, and one that cannot start is access denied"
    )
    func credentialCommand() async throws {
        // 256 KiB on each output, more than a pipe holds: neither may stall the other.
        var result = try await CredentialCommand.run(
            "/bin/sh",
            ["-c", "head -c 262144 /dev/zero | tr '\\0' e >&2; head -c 262144 /dev/zero | tr '\\0' o; exit 3"],
            timeout: .seconds(30), what: "The test command")
        #expect(result.status == 3)
        #expect(result.standardOutput.count == 262_144 && result.standardOutput.allSatisfy { $0 == UInt8(ascii: "o") })
        #expect(result.standardError.utf8.count == 262_144)
        result.standardOutput.wipe()

        let clock = ContinuousClock()
        let start = clock.now
        await expectError(.kmsUnavailable, containing: ["The slow command", "stopped"]) {
            _ = try await CredentialCommand.run(
                "/bin/sleep", ["30"], timeout: .milliseconds(300), what: "The slow command")
        }
        #expect(clock.now - start < .seconds(25), "stopped well before sleep 30 ended")

        await expectError(.kmsAccessDenied, containing: ["The missing command", "cannot be started"]) {
            _ = try await CredentialCommand.run("/nonexistent/az", [], what: "The missing command")
        }
        #expect(CredentialCommand.find("sh", in: "/nonexistent:/bin") == "/bin/sh")
        #expect(CredentialCommand.find("sh", in: "/nonexistent") == nil)
    }

    @Test("endpoints: https anywhere, plain http to loopback only, no user in the URL")
    func endpoints() throws {
        for valid in [
            "https://cloudkms.googleapis.com", "http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9",
        ] {
            #expect(throws: Never.self) { try EndpointURL.requiringTLS(valid, what: "x") }
        }
        for invalid in [
            "http://kms.example.com", "http://10.0.0.1", "ftp://127.0.0.1", "https://u:p@kms.example.com", "kms",
        ] {
            #expect(throws: DBKeyError.self, "\(invalid)") { try EndpointURL.requiringTLS(invalid, what: "x") }
        }
        #expect(try EndpointURL.metadataService("http://169.254.169.254", what: "x").host == "169.254.169.254")
        #expect(throws: DBKeyError.self) { try EndpointURL.metadataService("http://10.0.0.1/t", what: "x") }
    }

    @Test("a PEM private key's DER is decoded from between its header and footer lines")
    func pemToDer() throws {
        let der = (0..<300).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let base64 = Data(der).base64EncodedString(options: .lineLength64Characters)
        let pem = try Passphrase.fromText("-----BEGIN PRIVATE KEY-----\n\(base64)\n-----END PRIVATE KEY-----\n")
        #expect(try #require(ServiceAccountKey.der(ofPEM: pem)).withUnsafeBytes { Array($0) } == der)
        #expect(ServiceAccountKey.der(ofPEM: try Passphrase.fromText("no header")) == nil)
    }
}
