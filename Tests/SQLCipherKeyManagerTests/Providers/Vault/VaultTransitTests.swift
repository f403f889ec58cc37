import Foundation
import Testing

@testable import SQLCipherKeyManager
@testable import KmsHTTP
@testable import SQLCipherKeyManagerVault

@Suite("Vault Transit provider against OpenBao", .tags(.vault))
struct VaultTransitTests {
    let context: EncryptionContext = ["purpose": "vault-test", "tenant": "t-3"]

    @Test("a key that is not derived binds the context as associated_data: Transit refuses the wrap without it")
    func associatedDataEnforced() async throws {
        let kekId = try await OpenBao.createKey(derived: false)
        let dataKey = try await OpenBao.provider().generateDataKey(kekId: kekId, context: context)
        let decrypt = kekId.replacingOccurrences(of: "/keys/", with: "/decrypt/")
        let bound = VaultTransit.transitContext(context)
        let opened = try await OpenBao.admin(
            "POST", decrypt, ["ciphertext": dataKey.wrapped.encoded, "associated_data": bound])
        #expect(opened["plaintext"] as? String == dataKey.plaintext.withUnsafeBytes { Data($0).base64EncodedString() })
        // `context` is ignored by such a key; without the associated data the tag does not match.
        for body: [String: Any] in [
            ["ciphertext": dataKey.wrapped.encoded],
            ["ciphertext": dataKey.wrapped.encoded, "context": bound],
            ["ciphertext": dataKey.wrapped.encoded, "associated_data": VaultTransit.transitContext(.empty)],
        ] {
            let refused = try await OpenBao.send("POST", decrypt, body)
            #expect(refused.status == 400, "\(refused.object)")
        }
    }

    @Test("a derived key gets the context as Transit's context: another context derives another key")
    func derivationContextEnforced() async throws {
        let kekId = try await OpenBao.createKey(derived: true)
        let dataKey = try await OpenBao.provider().generateDataKey(kekId: kekId, context: context)
        let decrypt = kekId.replacingOccurrences(of: "/keys/", with: "/decrypt/")
        let opened = try await OpenBao.admin(
            "POST", decrypt, ["ciphertext": dataKey.wrapped.encoded, "context": VaultTransit.transitContext(context)])
        #expect(opened["plaintext"] as? String == dataKey.plaintext.withUnsafeBytes { Data($0).base64EncodedString() })
        let refused = try await OpenBao.send(
            "POST", decrypt,
            ["ciphertext": dataKey.wrapped.encoded, "context": VaultTransit.transitContext(["purpose": "other"])])
        #expect(refused.status == 400, "\(refused.object)")
    }

    @Test(
        "init → sql → rotate → Transit key rotated → status warns → rewrap to the newest version → opens",
        arguments: [false, true])
    func lifecycle(derived: Bool) async throws {
        let kekId = try await OpenBao.createKey(derived: derived)
        let transport = CountingTransport()
        let kms = try OpenBao.provider(transport: transport)
        let database = try await TestDatabase(rows: 100, kms: kms, kekId: kekId, context: context)
        let manager = database.manager()
        #expect(try manager.load().kms == "vault")
        #expect(try manager.load().kekId == kekId)
        #expect(try await manager.rotateKey().version == 2)
        try await database.expectIntact()
        #expect(try manager.load().encryptedDek.encoded.hasPrefix("vault:v1:"))

        try await OpenBao.rotate(kekId)
        let before = try await database.manager().status()
        #expect(before.wrappedKekVersion == "1")
        #expect(try before.kmsHealth.get().latestKekVersion == "2")
        #expect(before.wrappedUnderOlderKeyVersion)
        let diagnosis = await database.manager().doctor()
        #expect(diagnosis.findings.map(\.check) == ["kek-version-outdated"], "\(diagnosis.findings)")

        transport.reset()
        let rewrapped = try await manager.rewrap(to: kms, kekId: kekId)
        #expect(rewrapped.encryptedDek.encoded.hasPrefix("vault:v2:"))
        #expect(rewrapped.version == 2, "the data key is the same")
        let rewrapPath = "/v1/" + kekId.replacingOccurrences(of: "/keys/", with: "/rewrap/")
        let encryptPath = "/v1/" + kekId.replacingOccurrences(of: "/keys/", with: "/encrypt/")
        if derived {
            // Transit's rewrap: the plaintext does not leave the server.
            #expect(transport.count(rewrapPath) == 1 && transport.count(encryptPath) == 0)
        } else {
            // rewrap takes no associated_data, so the key is wrapped again with encrypt.
            #expect(transport.count(rewrapPath) == 0 && transport.count(encryptPath) == 1)
        }
        let after = try await database.manager().status()
        #expect(after.wrappedKekVersion == "2")
        #expect(!after.wrappedUnderOlderKeyVersion)
        #expect(await database.manager().doctor().isHealthy)
        try await database.expectIntact(database.manager(kms: try OpenBao.provider()))
    }

    @Test("a wrap older than min_decryption_version is refused with rewrap advice; the advice works")
    func minimumDecryptionVersion() async throws {
        let kekId = try await OpenBao.createKey()
        let database = try await TestDatabase(rows: 50, kms: try OpenBao.provider(), kekId: kekId)
        try await OpenBao.rotate(kekId)
        try await OpenBao.setMinimumDecryptionVersion(kekId, 2)
        let keyBefore = try contents(database.path + ".key")
        let databaseBefore = try contents(database.path)
        await expectError(
            .kmsKeyDisabled,
            containing: ["version 1 of \(kekId)", "min_decryption_version", "dbkey rewrap", "raise it again"]
        ) {
            _ = try await database.manager(kms: try OpenBao.provider()).open()
        }
        #expect(try contents(database.path + ".key") == keyBefore)
        #expect(try contents(database.path) == databaseBefore)

        // What the message says to do.
        try await OpenBao.setMinimumDecryptionVersion(kekId, 1)
        try await database.manager(kms: try OpenBao.provider()).rewrap(to: try OpenBao.provider(), kekId: kekId)
        try await OpenBao.setMinimumDecryptionVersion(kekId, 2)
        try await database.expectIntact(database.manager(kms: try OpenBao.provider()))
    }

    @Test("a key on a nested mount and in a namespace is reached; the namespace is required")
    func mountAndNamespace() async throws {
        let nested = try await OpenBao.createKey(mount: "apps/transit")
        let kms = try OpenBao.provider()
        let dataKey = try await kms.generateDataKey(kekId: nested, context: context)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: nested, context: context) == dataKey.plaintext)

        let namespace = "ns-" + UUID().uuidString.prefix(8).lowercased()
        try await OpenBao.admin("POST", "sys/namespaces/\(namespace)")
        try await OpenBao.admin("POST", "sys/mounts/transit", ["type": "transit"], namespace: namespace)
        try await OpenBao.admin("POST", "transit/keys/in-namespace", [:], namespace: namespace)
        let inNamespace = VaultTransit(
            address: try OpenBao.address(), token: try Passphrase.fromText(try OpenBao.rootToken()),
            namespace: namespace, retry: .init(attempts: 1), transport: URLSessionKmsTransport(), logger: silentLogger)
        let namespaced = try await inNamespace.generateDataKey(kekId: "transit/keys/in-namespace", context: context)
        #expect(
            try await inNamespace.decrypt(namespaced.wrapped, kekId: namespaced.kekId, context: context)
                == namespaced.plaintext)
        await expectError(.kmsKeyNotFound) {
            _ = try await kms.generateDataKey(kekId: "transit/keys/in-namespace", context: context)
        }
    }

    @Test("errors: a wrong token, a policy without datakey, a missing key or mount, each with its code")
    func errors() async throws {
        let kekId = try await OpenBao.createKey()
        let wrongToken = "s.not-a-token-0123456789"
        let denied = await expectError(.kmsAccessDenied, containing: ["permission denied", "VAULT_TOKEN"]) {
            _ = try await OpenBao.provider(token: wrongToken).generateDataKey(kekId: kekId, context: context)
        }
        #expect(denied?.message.contains(wrongToken) == false)

        let readOnly = try await OpenBao.token(policy: "path \"\(kekId)\" { capabilities = [\"read\"] }")
        await expectError(.kmsAccessDenied, containing: ["update on transit/datakey/plaintext/"]) {
            _ = try await OpenBao.provider(token: readOnly).generateDataKey(kekId: kekId, context: context)
        }
        await expectError(.kmsKeyNotFound, containing: ["transit/keys/no-such-key"]) {
            _ = try await OpenBao.provider().generateDataKey(kekId: "transit/keys/no-such-key", context: context)
        }
        await expectError(.kmsKeyNotFound, containing: ["no-such-mount"]) {
            _ = try await OpenBao.provider().health(kekId: "no-such-mount/keys/k")
        }
        await expectError(.invalidConfiguration) {
            _ = try await OpenBao.provider().health(kekId: "transit/k")
        }
        // A signing key cannot wrap: health says so, and Transit's own refusal is not retried.
        let signing = "transit/keys/sign-" + UUID().uuidString.lowercased()
        try await OpenBao.admin("POST", signing, ["type": "ed25519"])
        await expectError(.invalidConfiguration, containing: ["cannot encrypt and decrypt", "ed25519"]) {
            _ = try await OpenBao.provider().health(kekId: signing)
        }
        let counting = CountingTransport()
        await expectError(.invalidConfiguration) {
            _ = try await OpenBao.provider(transport: counting).generateDataKey(kekId: signing, context: context)
        }
        #expect(counting.count("/v1/" + signing.replacingOccurrences(of: "/keys/", with: "/datakey/plaintext/")) == 1)
    }

    @Test("5xx answers and refused connections are retried with backoff; a permanent error is sent once")
    func retries() async throws {
        let kekId = try await OpenBao.createKey()
        let retry = RetryPolicy(attempts: 3, timeout: .seconds(5), initialBackoff: .milliseconds(10))
        let flaky = ScriptedTransport([.status(503, #"{"errors":["Vault is sealed"]}"#), .unreachable])
        let kms = try OpenBao.provider(retry: retry, transport: flaky)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(flaky.calls == 4, "503, refused, then the key read and the datakey call")

        let counting = CountingTransport()
        let counted = try OpenBao.provider(retry: retry, transport: counting)
        _ = try await counted.health(kekId: kekId)
        var tampered = dataKey.wrapped.encoded
        tampered.removeLast(4)
        tampered += "AAAA"
        await expectError(.ciphertextInvalid) {
            _ = try await counted.decrypt(WrappedDataKey(encoded: tampered), kekId: kekId, context: context)
        }
        #expect(counting.count("/v1/" + kekId.replacingOccurrences(of: "/keys/", with: "/decrypt/")) == 1)

        let down = VaultTransit(
            address: URL(string: "http://127.0.0.1:9")!, token: try Passphrase.fromText("t"), namespace: nil,
            retry: retry, transport: counting, logger: silentLogger)
        counting.reset()
        await expectError(.kmsUnavailable) { _ = try await down.health(kekId: kekId) }
        #expect(counting.count("/v1/" + kekId) == 3)
    }

    @Test("configuration from the environment: VAULT_*, BAO_*, a token file with the key-file checks")
    func environment() async throws {
        let address = try OpenBao.value("ADDR")
        let token = try OpenBao.rootToken()
        let kekId = try await OpenBao.createKey()
        let directory = try TemporaryDirectory()
        let tokenFile = directory.file("token")
        _ = FileManager.default.createFile(
            atPath: tokenFile, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600])
        for environment in [
            ["VAULT_ADDR": address, "VAULT_TOKEN": token],
            ["BAO_ADDR": address, "BAO_TOKEN": token],
            ["VAULT_ADDR": address, VaultTransit.tokenFileVariable: tokenFile],
        ] {
            let kms = try VaultTransit.fromEnvironment(environment, logger: silentLogger)
            #expect(try await kms.health(kekId: kekId).kekId == kekId)
        }
        #expect(chmod(tokenFile, 0o640) == 0)
        #expect(throws: DBKeyError.self) {
            try VaultTransit.fromEnvironment(
                ["VAULT_ADDR": address, VaultTransit.tokenFileVariable: tokenFile], logger: silentLogger)
        }
        let missing = #expect(throws: DBKeyError.self) {
            try VaultTransit.fromEnvironment(["VAULT_ADDR": address, "HOME": directory.path], logger: silentLogger)
        }
        #expect(missing?.code == .kmsAccessDenied)
        let badRetries = #expect(throws: DBKeyError.self) {
            try VaultTransit.fromEnvironment(
                ["VAULT_ADDR": address, "VAULT_TOKEN": token, "VAULT_MAX_RETRIES": "many"], logger: silentLogger)
        }
        #expect(badRetries?.code == .invalidConfiguration)
    }

    @Test("key names and ciphertext versions are parsed strictly")
    func parsing() throws {
        #expect(try TransitKeyPath("transit/keys/app-db").apiPath("decrypt") == "/v1/transit/decrypt/app-db")
        #expect(try TransitKeyPath("apps/transit/keys/db_1.x").mount == "apps/transit")
        for invalid in ["transit/app", "transit/keys/", "/keys/a", "transit//keys/a", "tr ansit/keys/a", "t/keys/a/b"] {
            #expect(throws: DBKeyError.self, "\(invalid)") { try TransitKeyPath(invalid) }
        }
        let kms = try OpenBao.provider()
        #expect(kms.kekVersion(of: WrappedDataKey(encoded: "vault:v12:abc")) == "12")
        for invalid in ["vault:v0:abc", "vault:vx:abc", "vault:v1:", "YWJj", "vault:1:abc"] {
            #expect(kms.kekVersion(of: WrappedDataKey(encoded: invalid)) == nil, "\(invalid)")
        }
    }
}
