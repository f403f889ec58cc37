import Crypto
import Foundation
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAzure

@Suite("Key Vault provider against the fake Key Vault and Microsoft's client", .tags(.azure))
struct AzureKeyVaultTests {
    let context: EncryptionContext = ["purpose": "azure-test", "tenant": "t-4"]

    static let keyTypes = ["RSA", "oct-HSM"]

    @Test(
        "init → rotate → a new key version → rewrap → the new version recorded; the old wrap still opens",
        arguments: keyTypes)
    func lifecycle(type: String) async throws {
        let (name, first) = try await FakeKeyVault.createKey(type: type)
        let kekId = try FakeKeyVault.kekId(name)
        let kms = try FakeKeyVault.provider()
        let database = try await TestDatabase(rows: 50, kms: kms, kekId: kekId, context: context)
        let manager = database.manager()
        #expect(try manager.load().kms == "azure")
        #expect(try manager.load().encryptedDek.encoded.hasPrefix("azurekv:\(first):"))
        #expect(try await manager.rotateKey().version == 2)
        try await database.expectIntact()
        let before = try manager.load().encryptedDek

        let second = try await FakeKeyVault.rotate(name)
        let rewrapped = try await manager.rewrap(to: kms, kekId: kekId)
        #expect(rewrapped.encryptedDek.encoded.hasPrefix("azurekv:\(second):"))
        try await database.expectIntact()
        // The wrap under the first version names it, so it still unwraps after the rotation.
        #expect(try await kms.decrypt(before, kekId: kekId, context: context) == (try await database.currentKey()))
        let health = try await kms.health(kekId: kekId)
        #expect(health.kekId == kekId && health.keyState == "enabled")

        try await FakeKeyVault.admin("enabled", ["name": name, "version": second, "enabled": false])
        await expectError(.kmsKeyDisabled, containing: ["disabled"]) {
            _ = try await kms.decrypt(rewrapped.encryptedDek, kekId: kekId, context: context)
        }
        await expectError(.kmsKeyDisabled) { _ = try await kms.health(kekId: kekId) }
        // A KEK id pinned to the first version wraps under it.
        let pinned = try await kms.encrypt(
            try SecureBuffer.random(count: 32), kekId: kekId + "/" + first, context: context)
        #expect(pinned.encoded.hasPrefix("azurekv:\(first):"))
    }

    @Test(
        "interop: Microsoft's client unwraps what we wrapped: the data key, SHA-256 of the context, 8 random bytes",
        arguments: keyTypes)
    func microsoftUnwrapsOurs(type: String) async throws {
        let (name, version) = try await FakeKeyVault.createKey(type: type)
        let kekId = try FakeKeyVault.kekId(name)
        let dataKey = try await FakeKeyVault.provider().generateDataKey(kekId: kekId, context: context)
        let (wrappedVersion, value) = try #require(AzureKeyVault.parts(of: dataKey.wrapped))
        #expect(wrappedVersion == version)
        let answer = try await FakeKeyVault.microsoftClient([
            "op": "unwrap", "key_id": "\(try FakeKeyVault.origin().absoluteString)/keys/\(name)/\(version)",
            "alg": type == "RSA" ? "RSA-OAEP-256" : "A256KW", "value": Base64URL.encode(value),
        ])
        let digest = SHA256.hash(data: context.canonicalEncoding).map { String(format: "%02x", $0) }.joined()
        let keyHex = dataKey.plaintext.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() }
        let unwrapped = try #require(answer["value_hex"])
        #expect(unwrapped.hasPrefix(keyHex + digest) && unwrapped.count == (32 + 32 + 8) * 2)
    }

    @Test(
        "interop: what Microsoft's client wrapped (data key, context digest, salt) unwraps through us",
        arguments: keyTypes)
    func oursUnwrapsMicrosofts(type: String) async throws {
        let (name, version) = try await FakeKeyVault.createKey(type: type)
        let key = try SecureBuffer.random(count: 32)
        let payload = try ContextBoundKey.bind(key, to: context, saltByteCount: AzureKeyVault.saltByteCount)
        let answer = try await FakeKeyVault.microsoftClient([
            "op": "wrap", "key_id": "\(try FakeKeyVault.origin().absoluteString)/keys/\(name)/\(version)",
            "alg": type == "RSA" ? "RSA-OAEP-256" : "A256KW",
            "value_hex": payload.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() },
        ])
        let text = try #require(answer["value"])
        let value = try #require(Base64URL.decode(text))
        let stored = value.base64Encoded().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        let wrapped = WrappedDataKey(encoded: "azurekv:\(version):\(stored)")
        let kms = try FakeKeyVault.provider()
        let kekId = try FakeKeyVault.kekId(name)
        #expect(try await kms.decrypt(wrapped, kekId: kekId, context: context) == key)
        await expectError(.ciphertextInvalid, containing: ["another encryption context"]) {
            _ = try await kms.decrypt(wrapped, kekId: kekId, context: ["purpose": "other"])
        }
    }

    @Test(
        "the challenge: a resource that is not the vault's is refused before any token is asked for; so is another tenant"
    )
    func challengeChecks() async throws {
        let (name, _) = try await FakeKeyVault.createKey()
        let transport = CountingTransport()
        try await FakeKeyVault.admin("challenge", ["name": name, "resource": "https://vault.azure.net"])
        await expectError(.kmsAccessDenied, containing: ["https://vault.azure.net", "not its own domain"]) {
            _ = try await FakeKeyVault.provider(transport: transport)
                .generateDataKey(kekId: try FakeKeyVault.kekId(name), context: context)
        }
        #expect(transport.count("/keys/\(name)") == 1, "the request without a token")
        #expect(transport.count("/\(try FakeKeyVault.value("TENANT"))/oauth2/v2.0/token") == 0)
        let kekId = try FakeKeyVault.kekId("conformance-rsa")
        let otherTenant = try FakeKeyVault.clientCredentials(tenant: "00000000-0000-4000-8000-000000000000")
        await expectError(.kmsAccessDenied, containing: ["belongs to tenant", "AZURE_TENANT_ID"]) {
            _ = try await FakeKeyVault.provider(credentials: otherTenant).generateDataKey(
                kekId: kekId, context: context)
        }
        for (header, fragment) in [
            ("Basic realm=\"x\"", "not a Bearer token"), ("Bearer authorization=\"https://a/t\"", "names no resource"),
            ("Bearer resource=\"https://evil.example\"", "not its own domain"),
        ] {
            await expectError(.kmsAccessDenied, containing: [fragment]) {
                _ = try AuthenticationChallenge(header: header, vaultHost: "v.vault.azure.net")
            }
        }
        let real = try AuthenticationChallenge(
            header:
                #"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1", resource="https://vault.azure.net""#,
            vaultHost: "myvault.vault.azure.net")
        #expect(real.scope == "https://vault.azure.net/.default" && real.tenant == "72f988bf-86f1")
        let scoped = try AuthenticationChallenge(
            header:
                #"Bearer authorization_uri="https://login.microsoftonline.com/t1", scope="https://managedhsm.azure.net/.default""#,
            vaultHost: "pool.managedhsm.azure.net")
        #expect(
            scoped.scope == "https://managedhsm.azure.net/.default" && scoped.resource == "https://managedhsm.azure.net"
        )
    }

    @Test(
        "managed identity: App Service's endpoint and IMDS give tokens; a wrong header and an absent IMDS are access denied"
    )
    func managedIdentity() async throws {
        let kekId = try FakeKeyVault.kekId("conformance-rsa")
        let http = "http://127.0.0.1:\(try FakeKeyVault.value("HTTP_PORT"))"
        let appService = try AzureCredentials.fromEnvironment([
            "IDENTITY_ENDPOINT": http + "/msi/token", "IDENTITY_HEADER": try FakeKeyVault.value("IDENTITY_HEADER"),
        ])
        let imds = try AzureCredentials.fromEnvironment(["AZURE_POD_IDENTITY_AUTHORITY_HOST": http])
        for credentials in [appService, imds] {
            let kms = try FakeKeyVault.provider(credentials: credentials)
            let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
            #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
        }
        let wrongHeader = try AzureCredentials.fromEnvironment([
            "IDENTITY_ENDPOINT": http + "/msi/token", "IDENTITY_HEADER": "wrong",
        ])
        await expectError(.kmsAccessDenied, containing: ["HTTP 401", "managed identity"]) {
            _ = try await FakeKeyVault.provider(credentials: wrongHeader).generateDataKey(
                kekId: kekId, context: context)
        }
        // No az on the PATH either.
        let absent = try AzureCredentials.fromEnvironment([
            "AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:9", "PATH": "/nonexistent",
        ])
        await expectError(.kmsAccessDenied, containing: ["No Azure credentials", "AZURE_CLIENT_SECRET", "az login"]) {
            _ = try await FakeKeyVault.provider(credentials: absent).generateDataKey(kekId: kekId, context: context)
        }
        // Sources in the SDK's order, and what is refused.
        #expect(
            try AzureCredentials.fromEnvironment(
                ProviderEnvironment(
                    try FakeKeyVault.processEnvironment().merging(["IDENTITY_ENDPOINT": http, "IDENTITY_HEADER": "h"]) {
                        a, _ in a
                    })
            ).summary.contains("service principal"))
        #expect(try AzureCredentials.fromEnvironment([:]).summary.contains("IMDS at 169.254.169.254"))
        await expectError(.invalidConfiguration, containing: ["AZURE_TENANT_ID"]) {
            _ = try AzureCredentials.fromEnvironment(["AZURE_CLIENT_SECRET": "s"])
        }
        await expectError(.invalidConfiguration, containing: ["https://"]) {
            _ = try AzureCredentials.fromEnvironment([
                "IDENTITY_ENDPOINT": "http://identity.example.com/t", "IDENTITY_HEADER": "h",
            ])
        }
        await expectError(.invalidConfiguration, containing: ["https://"]) {
            _ = try AzureCredentials.fromEnvironment([
                "AZURE_CLIENT_SECRET": "s", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_ID": "c",
                "AZURE_AUTHORITY_HOST": "http://login.example.com",
            ])
        }
    }

    @Test(
        "errors: a wrong secret, a role without unwrapKey, a missing key, an untrusted certificate, each with its code")
    func errorMapping() async throws {
        let kekId = try FakeKeyVault.kekId("conformance-rsa")
        let good = try await FakeKeyVault.provider().generateDataKey(kekId: kekId, context: context)
        await expectError(.kmsAccessDenied, containing: ["invalid_client", "AADSTS7000215"]) {
            _ = try await FakeKeyVault.provider(credentials: try FakeKeyVault.clientCredentials(secret: "wrong"))
                .decrypt(good.wrapped, kekId: kekId, context: context)
        }
        let wrapOnly = try await FakeKeyVault.client(operations: ["get", "wrapKey"])
        let limited = try FakeKeyVault.provider(
            credentials: .clientSecret(
                tenant: try FakeKeyVault.value("TENANT"), clientId: wrapOnly.id,
                secret: try Passphrase.fromText(wrapOnly.secret), authority: try FakeKeyVault.origin()))
        _ = try await limited.generateDataKey(kekId: kekId, context: context)
        await expectError(
            .kmsAccessDenied, containing: ["HTTP 403", "unwrapKey", "Key Vault Crypto Service Encryption User"]
        ) {
            _ = try await limited.decrypt(good.wrapped, kekId: kekId, context: context)
        }
        await expectError(.kmsKeyNotFound, containing: ["KeyNotFound"]) {
            _ = try await FakeKeyVault.provider().generateDataKey(
                kekId: try FakeKeyVault.kekId("missing"), context: context)
        }
        let untrusted = "127.0.0.1:\(try FakeKeyVault.value("UNTRUSTED_PORT"))/keys/conformance-rsa"
        await expectError(.invalidConfiguration, containing: ["TLS certificate of 127.0.0.1 was not accepted"]) {
            _ = try await FakeKeyVault.provider().generateDataKey(kekId: untrusted, context: context)
        }
        for bad in [
            "v.vault.azure.net/secrets/x", "v.vault.azure.net/keys/", "v.vault.azure.net/keys/a/123", "v/keys/a b",
        ] {
            await expectError(.invalidConfiguration, containing: ["HOST/keys/NAME"]) {
                _ = try await FakeKeyVault.provider().generateDataKey(kekId: bad, context: context)
            }
        }
    }

    @Test("429 and 503 answers are retried and then succeed; a 400 is sent once")
    func retries() async throws {
        let (name, _) = try await FakeKeyVault.createKey()
        let kekId = try FakeKeyVault.kekId(name)
        let transport = CountingTransport()
        let kms = try FakeKeyVault.provider(
            retry: .init(attempts: 3, timeout: .seconds(5), initialBackoff: .milliseconds(10)), transport: transport)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        let version = try #require(AzureKeyVault.parts(of: dataKey.wrapped)).version
        let unwrapPath = "/keys/\(name)/\(version)/unwrapkey"
        try await FakeKeyVault.fail(status: 429, count: 1, path: unwrapPath)
        try await FakeKeyVault.fail(status: 503, count: 1, path: unwrapPath)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
        #expect(transport.count(unwrapPath) == 3)
        // An open unwraps without reading the key: a new provider sends the challenge's request
        // to the key's path and the unwrap, no GET of the key.
        let opening = CountingTransport()
        _ = try await FakeKeyVault.provider(transport: opening).decrypt(dataKey.wrapped, kekId: kekId, context: context)
        #expect(opening.count("/keys/\(name)") == 1 && opening.count(unwrapPath) == 1)
        transport.reset()
        var bytes = try #require(AzureKeyVault.parts(of: dataKey.wrapped)).value
        bytes[bytes.count / 2] ^= 1
        await expectError(.ciphertextInvalid, containing: ["BadParameter"]) {
            _ = try await kms.decrypt(
                WrappedDataKey(encoded: "azurekv:\(version):\(Data(bytes).base64EncodedString())"), kekId: kekId,
                context: context)
        }
        #expect(transport.count(unwrapPath) == 1)
    }

    @Test(
        "A 429 is waited out as its Retry-After asks, past the attempt count, and counted by a fleet's limiter; one whose Retry-After ends past the deadline is reported at once"
    )
    func throttling() async throws {
        let (name, _) = try await FakeKeyVault.createKey()
        let kekId = try FakeKeyVault.kekId(name)
        let transport = CountingTransport()
        let kms = try FakeKeyVault.provider(
            retry: .init(attempts: 1, timeout: .seconds(5), initialBackoff: .milliseconds(10)), transport: transport)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        let version = try #require(AzureKeyVault.parts(of: dataKey.wrapped)).version
        let unwrapPath = "/keys/\(name)/\(version)/unwrapkey"
        let limiter = KmsRateLimiter(requestsPerSecond: nil)
        let limited = try KmsRegistry(kms).rateLimited(limiter).provider(named: kms.providerName)
        try await FakeKeyVault.fail(status: 429, count: 2, path: unwrapPath, headers: ["Retry-After": "1"])
        let clock = ContinuousClock()
        let started = clock.now
        #expect(try await limited.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
        #expect(clock.now - started >= .seconds(2), "both Retry-Afters were waited for")
        #expect(transport.count(unwrapPath) == 3 && limiter.throttled == 2 && limiter.requests == 1)

        let impatient = try FakeKeyVault.provider(
            retry: .init(attempts: 3, timeout: .seconds(5), throttleDeadline: .seconds(5)), transport: transport)
        try await FakeKeyVault.fail(status: 429, count: 1, path: unwrapPath, headers: ["Retry-After": "3600"])
        transport.reset()
        do {
            _ = try await impatient.decrypt(dataKey.wrapped, kekId: kekId, context: context)
            Issue.record("a call throttled for an hour succeeded")
        } catch let error as DBKeyError {
            #expect(error.code == .kmsUnavailable && error.throttling?.retryAfter == .seconds(3600))
            #expect(error.message.contains("Throttled") && error.message.contains(RetryPolicy.throttleDeadlineVariable))
        }
        #expect(transport.count(unwrapPath) == 1)
    }

    @Test(
        "A new key version in the vault: status shows the wrap's 32-hex version is not the newest, doctor names it, rewrap moves to the newest"
    )
    func newerVersion() async throws {
        let (name, first) = try await FakeKeyVault.createKey()
        let kekId = try FakeKeyVault.kekId(name)
        let kms = try FakeKeyVault.provider()
        let database = try await TestDatabase(rows: 40, kms: kms, kekId: kekId, context: context)
        let manager = database.manager()
        #expect(try await manager.status().wrappedKekVersion == first)
        #expect(try await manager.status().wrappedUnderOlderKeyVersion == false)

        let second = try await FakeKeyVault.rotate(name)
        #expect(second != first && KeyVaultKeyName.isVersion(second))
        let status = try await database.manager().status()
        #expect(status.wrappedKekVersion == first)
        #expect(try status.kmsHealth.get().latestKekVersion == second)
        #expect(status.wrappedUnderOlderKeyVersion)
        let report = await database.manager().doctor()
        #expect(report.findings.contains { $0.check == "kek-version-outdated" && $0.message.contains(second) })

        let rewrapped = try await manager.rewrap(to: kms, kekId: kekId)
        #expect(kms.kekVersion(of: rewrapped.encryptedDek) == second)
        #expect(try await database.manager().status().wrappedUnderOlderKeyVersion == false)
        try await database.expectIntact()
    }

    @Test(
        "workload identity: the federated token file, before managed identity, as DefaultAzureCredential takes it; a token for another subject is refused, naming the source, never the token"
    )
    func workloadIdentity() async throws {
        let directory = try TemporaryDirectory()
        let (clientId, tokenFile) = try await FakeKeyVault.federatedClient(
            subject: "system:serviceaccount:tenants:dbkey", in: directory)
        let http = "http://127.0.0.1:\(try FakeKeyVault.value("HTTP_PORT"))"
        let environment = [
            "AZURE_TENANT_ID": try FakeKeyVault.value("TENANT"), "AZURE_CLIENT_ID": clientId,
            "AZURE_FEDERATED_TOKEN_FILE": tokenFile, "AZURE_AUTHORITY_HOST": try FakeKeyVault.origin().absoluteString,
            // Managed identity is there too, as on AKS: workload identity comes first.
            "IDENTITY_ENDPOINT": http + "/msi/token", "IDENTITY_HEADER": try FakeKeyVault.value("IDENTITY_HEADER"),
            "HOME": directory.path,
        ]
        let microsoft = try await FakeKeyVault.defaultAzureCredential(environment, key: "conformance-rsa")
        #expect(microsoft.credential == "WorkloadIdentityCredential" && microsoft.status == 200, "\(microsoft)")
        let credentials = try AzureCredentials.fromEnvironment(ProviderEnvironment(environment))
        #expect(credentials.summary.contains("workload identity \(clientId)"))
        let kekId = try FakeKeyVault.kekId("conformance-rsa")
        let kms = try FakeKeyVault.provider(credentials: credentials)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)

        let (otherClient, otherToken) = try await FakeKeyVault.federatedClient(
            subject: "system:serviceaccount:tenants:dbkey", tokenSubject: "system:serviceaccount:other:app",
            in: directory)
        var refusedEnvironment = environment
        refusedEnvironment["AZURE_CLIENT_ID"] = otherClient
        refusedEnvironment["AZURE_FEDERATED_TOKEN_FILE"] = otherToken
        let refused = try FakeKeyVault.provider(
            credentials: try AzureCredentials.fromEnvironment(ProviderEnvironment(refusedEnvironment)))
        let error = await expectError(
            .kmsAccessDenied, containing: ["workload identity", otherClient, otherToken, "AADSTS70021"]
        ) { _ = try await refused.generateDataKey(kekId: kekId, context: context) }
        let token = try String(contentsOfFile: otherToken, encoding: .utf8)
        #expect(error?.message.contains(token) == false && error?.message.contains(token.prefix(40)) == false)
        // A projected token that is gone (a pod whose volume was not mounted): access denied,
        // naming the file.
        var missing = environment
        missing["AZURE_FEDERATED_TOKEN_FILE"] = directory.file("absent-token")
        await expectError(.kmsAccessDenied, containing: ["AZURE_FEDERATED_TOKEN_FILE", "absent-token"]) {
            _ = try await FakeKeyVault.provider(
                credentials: try AzureCredentials.fromEnvironment(ProviderEnvironment(missing))
            ).generateDataKey(kekId: kekId, context: context)
        }
        await expectError(.invalidConfiguration, containing: ["AZURE_FEDERATED_TOKEN_FILE", "AZURE_TENANT_ID"]) {
            _ = try AzureCredentials.fromEnvironment(["AZURE_FEDERATED_TOKEN_FILE": tokenFile])
        }
    }
}
