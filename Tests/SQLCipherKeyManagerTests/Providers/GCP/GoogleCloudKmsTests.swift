import Crypto
import Foundation
import Synchronization
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerGCP

@Suite("Cloud KMS provider against the fake Cloud KMS, Google's client and drongo", .tags(.gcp))
struct CloudKmsTests {
    let context: EncryptionContext = ["purpose": "gcp-test", "tenant": "t-9"]

    /// The additionalAuthenticatedData DBKey binds, as base64 for Google's client.
    var aad: String { Data(GoogleCloudKms.additionalData(context)).base64EncodedString() }

    @Test("init → rotate → the Cloud KMS key gets a new primary → status shows 1 of 2 → rewrap → version 2 → opens")
    func lifecycle() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let kms = try FakeCloudKms.provider()
        let database = try await TestDatabase(rows: 60, kms: kms, kekId: kekId, context: context)
        let manager = database.manager()
        #expect(try manager.load().kms == "gcp")
        #expect(try manager.load().encryptedDek.encoded.hasPrefix("gcpkms:v1:"))
        #expect(try await manager.rotateKey().version == 2)
        try await database.expectIntact()

        #expect(try await FakeCloudKms.rotate(kekId) == 2)
        let status = try await database.manager().status()
        #expect(status.wrappedKekVersion == "1")
        #expect(try status.kmsHealth.get().latestKekVersion == "2")
        #expect(status.wrappedUnderOlderKeyVersion)
        let rewrapped = try await manager.rewrap(to: kms, kekId: kekId)
        #expect(rewrapped.encryptedDek.encoded.hasPrefix("gcpkms:v2:"))
        #expect(try await database.manager().status().wrappedUnderOlderKeyVersion == false)
        try await database.expectIntact()

        // Version 1 disabled: what it wrapped is refused as disabled, and health says so once
        // the primary is disabled too.
        let old = try await kms.encrypt(try SecureBuffer.random(count: 32), kekId: kekId, context: context)
        try await FakeCloudKms.setState(kekId, version: 2, "DISABLED")
        await expectError(.kmsKeyDisabled, containing: ["cryptoKeyVersions/2", "not enabled"]) {
            _ = try await kms.decrypt(old, kekId: kekId, context: context)
        }
        await expectError(.kmsKeyDisabled, containing: ["DISABLED"]) { _ = try await kms.health(kekId: kekId) }
        try await FakeCloudKms.setState(kekId, version: 2, "DESTROYED")
        await expectError(.kmsKeyDisabled, containing: ["DESTROYED"]) {
            _ = try await kms.decrypt(rewrapped.encryptedDek, kekId: kekId, context: context)
        }
    }

    @Test("interop: Google's client decrypts what we wrapped, with our additionalAuthenticatedData and only with it")
    func googleDecryptsOurs() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let dataKey = try await FakeCloudKms.provider().generateDataKey(kekId: kekId, context: context)
        let ciphertext = try #require(GoogleCloudKms.ciphertext(of: dataKey.wrapped))
        let answer = try await FakeCloudKms.googleClient([
            "op": "decrypt", "key": kekId, "ciphertext": Data(ciphertext).base64EncodedString(), "aad_b64": aad,
        ])
        #expect(secureBuffer(hex: try #require(answer["plaintext_hex"])) == dataKey.plaintext)
        let otherContext = Data(GoogleCloudKms.additionalData(["purpose": "other"])).base64EncodedString()
        await #expect(throws: DBKeyError.self) {
            _ = try await FakeCloudKms.googleClient([
                "op": "decrypt", "key": kekId, "ciphertext": Data(ciphertext).base64EncodedString(),
                "aad_b64": otherContext,
            ])
        }
    }

    @Test("interop: what Google's client encrypted with our additionalAuthenticatedData decrypts through us")
    func oursDecryptsGoogles() async throws {
        let kekId = try await FakeCloudKms.createKey()
        try await FakeCloudKms.rotate(kekId)
        let key = try SecureBuffer.random(count: 32)
        let hex = key.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() }
        let answer = try await FakeCloudKms.googleClient([
            "op": "encrypt", "key": kekId, "plaintext_hex": hex, "aad_b64": aad,
        ])
        #expect(answer["name"] == kekId + "/cryptoKeyVersions/2")
        let wrapped = WrappedDataKey(encoded: "gcpkms:v2:" + (try #require(answer["ciphertext"])))
        let kms = try FakeCloudKms.provider()
        #expect(try await kms.decrypt(wrapped, kekId: kekId, context: context) == key)
        #expect(kms.kekVersion(of: wrapped) == "2")
        await expectError(.ciphertextInvalid) {
            _ = try await kms.decrypt(wrapped, kekId: kekId, context: ["purpose": "other"])
        }
    }

    /// drongo is not in the conformance suite: its "ciphertext" is readable JSON, the same for
    /// the same key, so it fails the suite's freshness checks by design.
    @Test(
        "drongo as a second peer: a database lives through create, rotate and reopen; Google's client agrees both ways")
    func drongoBothWays() async throws {
        let kms = try Drongo.provider()
        let database = try await TestDatabase(rows: 20, kms: kms, kekId: Drongo.kekId, context: context)
        #expect(try await database.manager().rotateKey().version == 2)
        try await database.expectIntact()
        #expect(try await kms.health(kekId: Drongo.kekId).latestKekVersion == "1")
        let dataKey = try await kms.generateDataKey(kekId: Drongo.kekId, context: context)
        let endpoint = try Drongo.endpoint().absoluteString
        let ciphertext = Data(try #require(GoogleCloudKms.ciphertext(of: dataKey.wrapped))).base64EncodedString()
        let opened = try await FakeCloudKms.googleClient(
            ["op": "decrypt", "key": Drongo.kekId, "ciphertext": ciphertext, "aad_b64": aad], endpoint: endpoint,
            token: "drongo")
        #expect(secureBuffer(hex: try #require(opened["plaintext_hex"])) == dataKey.plaintext)
        let sealed = try await FakeCloudKms.googleClient(
            [
                "op": "encrypt", "key": Drongo.kekId, "plaintext_hex": String(repeating: "ab", count: 32),
                "aad_b64": aad,
            ],
            endpoint: endpoint, token: "drongo")
        let wrapped = WrappedDataKey(encoded: "gcpkms:v1:" + (try #require(sealed["ciphertext"])))
        #expect(
            try await kms.decrypt(wrapped, kekId: Drongo.kekId, context: context)
                == secureBuffer(hex: String(repeating: "ab", count: 32)))
    }

    @Test("CRC32C: the check values of RFC 3720 and of \"123456789\"")
    func crc32c() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum(Array(0..<32)) == 0x46DD_794E)
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test(
        "integrity: an answer altered in transit, a checksum the service did not verify, and a request altered in transit are refused",
        arguments: AlteringTransport.Alteration.allCases)
    func integrity(alteration: AlteringTransport.Alteration) async throws {
        let kekId = try await FakeCloudKms.createKey()
        let good = try await FakeCloudKms.provider().generateDataKey(kekId: kekId, context: context)
        let kms = try FakeCloudKms.provider(
            retry: .init(attempts: 1, timeout: .seconds(5)), transport: AlteringTransport(alteration))
        await expectError(.kmsUnavailable, containing: [alteration.expectedMessage]) {
            switch alteration {
            case .ciphertextInAnswer, .verifiedFlag, .plaintextChecksumInRequest:
                _ = try await kms.encrypt(try SecureBuffer.random(count: 32), kekId: kekId, context: context)
            case .plaintextInAnswer, .ciphertextChecksumInRequest:
                _ = try await kms.decrypt(good.wrapped, kekId: kekId, context: context)
            }
        }
    }

    @Test("errors: a refused token, a missing permission, a missing key, a tampered wrap, each with its code")
    func errorMapping() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let good = try await FakeCloudKms.provider().generateDataKey(kekId: kekId, context: context)
        let unknownToken = try FakeCloudKms.provider(credentials: .accessToken(try Passphrase.fromText("ya29.unknown")))
        await expectError(.kmsAccessDenied, containing: ["HTTP 401", "GOOGLE_OAUTH_ACCESS_TOKEN"]) {
            _ = try await unknownToken.decrypt(good.wrapped, kekId: kekId, context: context)
        }
        let directory = try TemporaryDirectory()
        let encryptOnly = try await FakeCloudKms.serviceAccount(
            permissions: ["cloudkms.cryptoKeyVersions.useToEncrypt"], in: directory)
        let limited = try FakeCloudKms.provider(credentials: .serviceAccount(keyFile: encryptOnly))
        _ = try await limited.encrypt(try SecureBuffer.random(count: 32), kekId: kekId, context: context)
        await expectError(
            .kmsAccessDenied, containing: ["HTTP 403", "useToDecrypt", "roles/cloudkms.cryptoKeyEncrypterDecrypter"]
        ) {
            _ = try await limited.decrypt(good.wrapped, kekId: kekId, context: context)
        }
        let missing = kekId.replacingOccurrences(of: "/cryptoKeys/", with: "/cryptoKeys/missing-")
        await expectError(.kmsKeyNotFound, containing: ["HTTP 404"]) {
            _ = try await FakeCloudKms.provider().generateDataKey(kekId: missing, context: context)
        }
        let otherKey = try await FakeCloudKms.createKey()
        await expectError(.ciphertextInvalid, containing: ["INVALID_ARGUMENT"]) {
            _ = try await FakeCloudKms.provider().decrypt(good.wrapped, kekId: otherKey, context: context)
        }
        await expectError(.invalidConfiguration, containing: ["projects/P/locations/L"]) {
            _ = try await FakeCloudKms.provider().generateDataKey(kekId: "projects/p/keyRings/r", context: context)
        }
    }

    @Test(
        "429 and 503 answers are retried with backoff and then succeed; a 400 is sent once; retries stop at the limit")
    func retries() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let transport = CountingTransport()
        let kms = try FakeCloudKms.provider(
            retry: .init(attempts: 3, timeout: .seconds(5), initialBackoff: .milliseconds(10)), transport: transport)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        let decryptPath = "/v1/\(kekId):decrypt"
        transport.reset()
        try await FakeCloudKms.fail(status: 429, count: 1, path: kekId + ":decrypt")
        try await FakeCloudKms.fail(status: 503, count: 1, path: kekId + ":decrypt")
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
        #expect(transport.count(decryptPath) == 3)

        transport.reset()
        await expectError(.ciphertextInvalid) {
            _ = try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: ["purpose": "other"])
        }
        #expect(transport.count(decryptPath) == 1)

        transport.reset()
        try await FakeCloudKms.fail(status: 503, count: 3, path: kekId + ":decrypt")
        await expectError(.kmsUnavailable, containing: ["HTTP 503"]) {
            _ = try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context)
        }
        #expect(transport.count(decryptPath) == 3)
    }

    @Test("a server slower than the timeout: each attempt is cut at its timeout, and the call ends as unavailable")
    func timeouts() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let timing = TimingTransport()
        let kms = try FakeCloudKms.provider(
            retry: .init(attempts: 2, timeout: .milliseconds(1500), initialBackoff: .milliseconds(10)),
            transport: timing)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        let before = timing.durations.count
        try await FakeCloudKms.fail(status: 0, count: 2, path: kekId + ":decrypt", delay: 6)
        await expectError(.kmsUnavailable, containing: ["did not answer within 1.5 s"]) {
            _ = try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context)
        }
        let attempts = timing.durations.dropFirst(before)
        #expect(attempts.count == 2)
        // Timed inside a process whose threads the other tests share, only the floor is exact;
        // the AWS tests check the ceiling on a dbkey process of its own.
        #expect(attempts.allSatisfy { $0 >= .milliseconds(1500) })
    }

    @Test(
        "tokens: one exchange for many calls; a revoked token replaced and the call sent again; a refused signature is access denied"
    )
    func serviceAccountTokens() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let directory = try TemporaryDirectory()
        let permissions = ["cloudkms.cryptoKeyVersions.useToEncrypt", "cloudkms.cryptoKeyVersions.useToDecrypt"]
        let keyFile = try await FakeCloudKms.serviceAccount(permissions: permissions, in: directory)
        let transport = CountingTransport()
        let kms = try FakeCloudKms.provider(credentials: .serviceAccount(keyFile: keyFile), transport: transport)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        for _ in 0..<3 { _ = try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) }
        #expect(transport.count("/token") == 1)

        // Revoked: the 401 makes the provider fetch a new token and send the call once more.
        let document = try #require(try JSONSerialization.jsonObject(with: contents(keyFile)) as? [String: Any])
        try await FakeCloudKms.admin("revoke", ["principal": try #require(document["client_email"] as? String)])
        transport.reset()
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
        #expect(transport.count("/token") == 1 && transport.count("/v1/\(kekId):decrypt") == 2)

        // When a token is due is the token cache's own test (CloudProviderPartsTests): timed
        // here, among the other tests' processes, a short-lived token can expire on the way.

        // A fixed token that is refused stays refused: two 401s, then access denied.
        let unknown = CountingTransport()
        let fixed = try FakeCloudKms.provider(
            credentials: .accessToken(try Passphrase.fromText("ya29.never-issued")), transport: unknown)
        await expectError(.kmsAccessDenied, containing: ["HTTP 401"]) {
            _ = try await fixed.decrypt(dataKey.wrapped, kekId: kekId, context: context)
        }
        #expect(unknown.count("/v1/\(kekId):decrypt") == 2)

        // The same file naming another account: the fake does not know its key.
        var strangerDocument = document
        strangerDocument["client_email"] = "stranger@fake-project.iam.gserviceaccount.com"
        let strangerFile = directory.file("stranger.json")
        _ = FileManager.default.createFile(
            atPath: strangerFile, contents: try JSONSerialization.data(withJSONObject: strangerDocument),
            attributes: [.posixPermissions: 0o600])
        let stranger = try FakeCloudKms.provider(credentials: .serviceAccount(keyFile: strangerFile))
        await expectError(.kmsAccessDenied, containing: ["invalid_grant", "stranger@"]) {
            _ = try await stranger.generateDataKey(kekId: kekId, context: context)
        }
    }

    @Test("credentials are found in Google's order: access token, key file, gcloud's file, metadata server")
    func credentialChain() async throws {
        let directory = try TemporaryDirectory()
        let keyFile = try FakeCloudKms.serviceAccountFile()
        func source(_ environment: [String: String]) throws -> String {
            try GoogleCredentials.fromEnvironment(
                ProviderEnvironment(environment.merging(["HOME": directory.path]) { a, _ in a })
            ).summary
        }
        #expect(
            try source(["GOOGLE_OAUTH_ACCESS_TOKEN": "t", "GOOGLE_APPLICATION_CREDENTIALS": keyFile]).contains(
                "GOOGLE_OAUTH_ACCESS_TOKEN"))
        #expect(try source(["GOOGLE_APPLICATION_CREDENTIALS": keyFile]).contains("service account sa-"))
        #expect(try source([:]).contains("metadata server at metadata.google.internal"))
        #expect(try source(["GCE_METADATA_HOST": "127.0.0.1:9"]).contains("metadata server at 127.0.0.1"))
        // gcloud's application-default file, under CLOUDSDK_CONFIG.
        let gcloud = directory.file("gcloud")
        try FileManager.default.createDirectory(atPath: gcloud, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: keyFile, toPath: gcloud + "/application_default_credentials.json")
        #expect(try source(["CLOUDSDK_CONFIG": gcloud]).contains("service account sa-"))

        // A kind of credential file DBKey does not read is refused, naming the kinds it reads; a
        // user's login (a secret) that others can read is refused; a key file others can read is
        // refused.
        let other = directory.file("other.json")
        _ = FileManager.default.createFile(
            atPath: other, contents: Data(#"{"type": "gdch_service_account", "name": "x"}"#.utf8),
            attributes: [.posixPermissions: 0o600])
        await expectError(
            .invalidConfiguration, containing: ["gdch_service_account", "authorized_user", "external_account"]
        ) {
            _ = try source(["GOOGLE_APPLICATION_CREDENTIALS": other])
        }
        let user = directory.file("user.json")
        _ = FileManager.default.createFile(
            atPath: user,
            contents: Data(
                #"{"type": "authorized_user", "client_id": "x", "client_secret": "s", "refresh_token": "r"}"#.utf8),
            attributes: [.posixPermissions: 0o644])
        await expectError(.keyFileInsecure) { _ = try source(["GOOGLE_APPLICATION_CREDENTIALS": user]) }
        let readable = directory.file("readable.json")
        try FileManager.default.copyItem(atPath: keyFile, toPath: readable)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: readable)
        await expectError(.keyFileInsecure) { _ = try source(["GOOGLE_APPLICATION_CREDENTIALS": readable]) }
        await expectError(.invalidConfiguration, containing: ["https://"]) {
            _ = try GoogleCloudKms.fromEnvironment(
                [GoogleCloudKms.endpointVariable: "http://kms.example.com", "GOOGLE_OAUTH_ACCESS_TOKEN": "t"],
                logger: silentLogger)
        }
    }

    @Test(
        "the metadata server's token is used; an absent metadata server is asked once, then access denied with advice")
    func metadataServer() async throws {
        let kekId = try await FakeCloudKms.createKey()
        let host = try #require(try FakeCloudKms.endpoint().host).appending(":\(try FakeCloudKms.endpoint().port ?? 0)")
        let metadata = try GoogleCredentials.fromEnvironment(["GCE_METADATA_HOST": host, "HOME": "/nonexistent"])
        let kms = try FakeCloudKms.provider(credentials: metadata)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)

        let absent = try GoogleCredentials.fromEnvironment(["GCE_METADATA_HOST": "127.0.0.1:9", "HOME": "/nonexistent"])
        let transport = CountingTransport()
        await expectError(.kmsAccessDenied, containing: ["No Google credentials", "GOOGLE_APPLICATION_CREDENTIALS"]) {
            _ = try await FakeCloudKms.provider(credentials: absent, transport: transport)
                .generateDataKey(kekId: kekId, context: context)
        }
        #expect(
            transport.count("/computeMetadata/v1/instance/service-accounts/default/token") == 1,
            "asked once, not retried")
    }
}

/// Alters one field of a Cloud KMS request or answer on its way, as a corrupting network would.
final class AlteringTransport: KmsTransport {
    enum Alteration: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case ciphertextInAnswer, plaintextInAnswer, verifiedFlag, plaintextChecksumInRequest,
            ciphertextChecksumInRequest

        var testDescription: String { rawValue }

        var expectedMessage: String {
            switch self {
            case .ciphertextInAnswer, .plaintextInAnswer: "altered in transit"
            case .verifiedFlag: "did not confirm the checksums"
            case .plaintextChecksumInRequest, .ciphertextChecksumInRequest: "checksum"
            }
        }
    }

    let alteration: Alteration
    private let inner = URLSessionKmsTransport()

    init(_ alteration: Alteration) { self.alteration = alteration }

    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        var request = request
        switch alteration {
        case .plaintextChecksumInRequest, .ciphertextChecksumInRequest:
            let field = alteration == .plaintextChecksumInRequest ? "plaintextCrc32c" : "ciphertextCrc32c"
            request.body = Self.replacing(field, in: request.body, with: "\"12345\"")
        default: break
        }
        var response = try await inner.send(request, timeout: timeout)
        switch alteration {
        case .ciphertextInAnswer: response.body = Self.flippingFirstCharacter(of: "ciphertext", in: response.body)
        case .plaintextInAnswer: response.body = Self.flippingFirstCharacter(of: "plaintext", in: response.body)
        case .verifiedFlag:
            response.body = Self.replacing("verifiedPlaintextCrc32c", in: response.body, with: "false")
        default: break
        }
        return response
    }

    /// The body with the value of `"field"` replaced by `value` (JSON text).
    static func replacing(_ field: String, in body: Data, with value: String) -> Data {
        let text = String(decoding: body, as: UTF8.self)
        let pattern = try! Regex("\"\(field)\"\\s*:\\s*(\"[^\"]*\"|true|false)")
        return Data(text.replacing(pattern, with: "\"\(field)\": \(value)").utf8)
    }

    /// The body with the first base64 character of `"field"`'s value changed.
    static func flippingFirstCharacter(of field: String, in body: Data) -> Data {
        var bytes = [UInt8](body)
        guard
            let range = bytes.firstRange(of: Array("\"\(field)\": \"".utf8))
                ?? bytes.firstRange(of: Array("\"\(field)\":\"".utf8))
        else { return body }
        bytes[range.upperBound] = bytes[range.upperBound] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        return Data(bytes)
    }
}
