import Foundation
import KmsHTTP
import Logging
import Synchronization
import SQLCipherKeyManager

/// Azure Key Vault and Managed HSM: data keys wrapped and unwrapped (`wrapkey`, `unwrapkey`) by
/// a key that never leaves the vault — RSA-OAEP-256 for an RSA key, A256KW for a symmetric
/// Managed HSM key.
///
/// The key is named `HOST/keys/NAME[/VERSION]` (`azure-kv://myvault.vault.azure.net/keys/app-db`
/// on the command line); without a version, the newest one wraps. The wrapped key is stored as
/// `azurekv:VERSION:WRAPPED`: the version that wrapped it (unwrapping needs it) and the bytes
/// the vault returned, in base64.
///
/// ```swift
/// let kms = try AzureKeyVault.fromEnvironment(logger: logger)
/// let manager = DatabaseKeyManager(
///     databasePath: path, kms: kms,
///     configuration: .init(
///         kekId: "myvault.vault.azure.net/keys/app-db", encryptionContext: ["purpose": "notes"]),
///     logger: logger)
/// ```
///
/// Key wrap binds no context, so what is wrapped is the data key followed by SHA-256 of
/// ``EncryptionContext/canonicalEncoding`` (and 8 random bytes, so that no two wraps are
/// alike), checked on unwrap: a wrapped key moved to a `.key` with another context is refused. With an RSA key that is a check against mix-ups only —
/// anyone holding the public key can make an RSA-OAEP wrap of a key and context of their own;
/// with an A256KW key only the vault can wrap.
///
/// Tokens come from ``AzureCredentials``, for the scope the vault's `WWW-Authenticate`
/// challenge names; a challenge naming a resource that is not the vault's own domain is
/// refused. The identity needs the key operations get, wrapKey and unwrapKey (the role
/// Key Vault Crypto Service Encryption User, or an access policy with those three).
///
/// 429 and 5xx answers, timeouts and refused connections are retried as ``RetryPolicy`` says.
public struct AzureKeyVault: EnvironmentConfigurable {
    /// `azure`.
    public let providerName = "azure"

    /// The Key Vault REST API version every request names.
    public static let apiVersion = "7.4"

    let credentials: AzureCredentials
    let retry: RetryPolicy
    let transport: any KmsTransport
    let logger: Logger
    private let tokens = BearerTokenCache()
    private let learned = VaultFacts()

    /// Creates the provider.
    public init(credentials: AzureCredentials, retry: RetryPolicy = RetryPolicy(), logger: Logger) {
        self.init(credentials: credentials, retry: retry, transport: URLSessionKmsTransport(), logger: logger)
    }

    init(credentials: AzureCredentials, retry: RetryPolicy, transport: any KmsTransport, logger: Logger) {
        self.credentials = credentials
        self.retry = retry
        self.transport = transport
        self.logger = logger
    }

    /// Makes the Key Vault provider from the environment (see ``fromEnvironment(_:logger:)``).
    public static let factory = KmsProviderFactory(
        AzureKeyVault.self, providerName: "azure", uriScheme: "azure-kv",
        uriForms: [
            "azure-kv://VAULT.vault.azure.net/keys/NAME[/VERSION]",
            "azure-kv://POOL.managedhsm.azure.net/keys/NAME[/VERSION]",
        ],
        help:
            "Azure Key Vault or Managed HSM: $AZURE_TENANT_ID, $AZURE_CLIENT_ID and $AZURE_CLIENT_SECRET, or a managed identity"
    )

    /// Configures the provider: credentials as ``AzureCredentials/fromEnvironment(_:)`` finds
    /// them, `DBKEY_KMS_MAX_ATTEMPTS` (default 3) and `DBKEY_KMS_TIMEOUT_SECONDS`.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process,
        logger: Logger
    ) throws -> AzureKeyVault {
        let retry = try RetryPolicy.fromEnvironment(
            environment, attemptsVariable: "DBKEY_KMS_MAX_ATTEMPTS", countsFirstAttempt: true)
        return AzureKeyVault(
            credentials: try AzureCredentials.fromEnvironment(environment), retry: retry, logger: logger)
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let key = try SecureBuffer.random(count: RawKeyText.keyByteCount)
        return DataKey(plaintext: key, wrapped: try await encrypt(key, kekId: kekId, context: context), kekId: kekId)
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        let name = try KeyVaultKeyName(kekId)
        let algorithm = try await wrapAlgorithm(name)
        let payload = try ContextBoundKey.bind(key, to: context, saltByteCount: AzureKeyVault.saltByteCount)
        let response = try await call(
            "wrapKey", name, url: name.url("wrapkey", version: nil),
            body: .jsonWithSecret(["alg": algorithm], name: "value", value: Base64URL.encode(payload)))
        let answer = try AzureKeyVault.object(response)
        guard let value = (answer["value"] as? String).flatMap(Base64URL.decode),
            let version = (answer["kid"] as? String).flatMap(AzureKeyVault.version(ofKid:))
        else {
            throw DBKeyError(.kmsUnavailable, "Key Vault's answer to wrapKey with \(name) has no value or kid.")
        }
        // The wrapped key is not secret; it is stored in base64, as the other providers store theirs.
        let stored = value.base64Encoded().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        return WrappedDataKey(encoded: "azurekv:\(version):\(stored)")
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        let name = try KeyVaultKeyName(kekId)
        guard let (version, value) = AzureKeyVault.parts(of: wrapped) else {
            throw DBKeyError(.ciphertextInvalid, "The wrapped data key is not a Key Vault wrap (azurekv:VERSION:…).")
        }
        // A256KW's output is its input plus 8 bytes; an RSA-OAEP wrap is as long as the key's
        // modulus (256 bytes and up). So unwrapping, which opens take, needs no read of the key.
        let algorithm = value.count == AzureKeyVault.payloadByteCount + 8 ? "A256KW" : "RSA-OAEP-256"
        var response = try await call(
            "unwrapKey", name, url: name.url("unwrapkey", version: version),
            body: .json(["alg": algorithm, "value": Base64URL.encode(value)]))
        defer { response.wipe() }
        guard let text = JSONSecretField.takeText("value", from: &response),
            let payload = text.withUnsafeBytes(Base64URL.decode)
        else {
            throw DBKeyError(.kmsUnavailable, "Key Vault answered without a value for \(name).")
        }
        return try ContextBoundKey.unbind(
            payload, from: context, saltByteCount: AzureKeyVault.saltByteCount, what: "The Key Vault wrap with \(name)")
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let name = try KeyVaultKeyName(kekId)
        let clock = ContinuousClock()
        let start = clock.now
        let key = try await readKey(name)
        let latency = clock.now - start
        guard key.enabled else {
            throw DBKeyError(
                .kmsKeyDisabled, "The Key Vault key \(name) (version \(key.version)) is disabled; enable it.")
        }
        return KmsHealth(
            kekId: name.description, keyState: "enabled", latency: latency,
            latestKekVersion: key.version == "?" ? nil : key.version)
    }

    /// The `VERSION` of an `azurekv:VERSION:…` wrapped key: the key version that wrapped it (32
    /// hex digits, unordered).
    public func kekVersion(of wrapped: WrappedDataKey) -> String? {
        AzureKeyVault.parts(of: wrapped)?.version
    }

    // MARK: - The protocol

    /// The number of random bytes after the digest: A256KW (RFC 3394) is deterministic, and
    /// they make every wrap of a key a new one, as RSA-OAEP's are.
    static let saltByteCount = 8

    /// What is wrapped: the data key, its context's SHA-256 and the salt.
    static let payloadByteCount = RawKeyText.keyByteCount + 32 + saltByteCount

    /// The version and the wrapped bytes of `azurekv:VERSION:BASE64`.
    static func parts(of wrapped: WrappedDataKey) -> (version: String, value: [UInt8])? {
        let parts = wrapped.encoded.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "azurekv", KeyVaultKeyName.isVersion(parts[1]),
            let value = Base64.decode(String(parts[2])), !value.isEmpty
        else { return nil }
        return (String(parts[1]), value)
    }

    /// The version in a key id URL, `https://HOST/keys/NAME/VERSION`.
    static func version(ofKid kid: String) -> String? {
        guard let last = URL(string: kid)?.pathComponents.last, KeyVaultKeyName.isVersion(last) else { return nil }
        return last
    }

    static func object(_ response: Data) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: response) as? [String: Any] else {
            throw DBKeyError(.kmsUnavailable, "Key Vault answered with a body that is not a JSON object.")
        }
        return object
    }

    /// What a key read tells: its type, whether it is enabled, its version.
    struct KeyFacts: Sendable {
        let type: String
        let enabled: Bool
        let version: String
    }

    private func readKey(_ name: KeyVaultKeyName) async throws -> KeyFacts {
        let object = try AzureKeyVault.object(try await call("get", name, url: name.url(nil, version: nil), body: nil))
        let key = object["key"] as? [String: Any] ?? [:]
        let facts = KeyFacts(
            type: key["kty"] as? String ?? "?",
            enabled: (object["attributes"] as? [String: Any])?["enabled"] as? Bool ?? true,
            version: (key["kid"] as? String).flatMap(AzureKeyVault.version(ofKid:)) ?? "?")
        learned.setKeyType(facts.type, for: name)
        return facts
    }

    /// RSA-OAEP-256 for an RSA key, A256KW for a symmetric (Managed HSM) key, learned from the
    /// key's first read (wrapping only: an unwrap tells the algorithm by the wrap's length).
    private func wrapAlgorithm(_ name: KeyVaultKeyName) async throws -> String {
        let type: String
        if let known = learned.keyType(of: name) {
            type = known
        } else {
            type = try await readKey(name).type
        }
        switch type {
        case "RSA", "RSA-HSM": return "RSA-OAEP-256"
        case "oct", "oct-HSM": return "A256KW"
        default:
            throw DBKeyError(
                .invalidConfiguration,
                "The Key Vault key \(name) is of type \(type); DBKey wraps with RSA (RSA-OAEP-256) or symmetric Managed HSM keys (A256KW)."
            )
        }
    }

    /// The vault's challenge, learned once per host from a request without a token.
    private func challenge(_ name: KeyVaultKeyName) async throws -> AuthenticationChallenge {
        if let known = learned.challenge(of: name.host) { return known }
        let request = KmsHTTPRequest(url: name.url(nil, version: nil), method: "GET", headers: [], body: Data())
        let response = try await retry.run("challenge", logger: logger) {
            let response = try await transport.send(request, timeout: retry.timeout)
            if response.status >= 500 || response.status == 429 {
                let error = DBKeyError(
                    .kmsUnavailable, "The vault \(name.host) answered HTTP \(response.status). Try again later.")
                guard response.status == 429 else { throw error }
                throw error.throttled(retryAfter: RetryAfter.parse(response.header("Retry-After")))
            }
            return response
        }
        guard response.status == 401, let header = response.header("WWW-Authenticate") else {
            throw DBKeyError(
                .kmsAccessDenied,
                "The vault \(name.host) answered HTTP \(response.status) with no authentication challenge to a request without a token: it does not look like Key Vault."
            )
        }
        let challenge = try AuthenticationChallenge(header: header, vaultHost: name.host)
        if let tenant = credentials.tenant, let vaultTenant = challenge.tenant,
            vaultTenant.lowercased() != tenant.lowercased()
        {
            throw DBKeyError(
                .kmsAccessDenied,
                "The vault \(name.host) belongs to tenant \(vaultTenant), and AZURE_TENANT_ID names \(tenant): use a service principal of the vault's tenant."
            )
        }
        learned.setChallenge(challenge, for: name.host)
        return challenge
    }

    /// Sends one request (a GET when `body` is `nil`) with a bearer token for the vault's
    /// challenge, and returns the successful body. A refused token is forgotten.
    private func call(_ operation: String, _ name: KeyVaultKeyName, url: URL, body: KmsHTTPClient.Body?) async throws
        -> Data
    {
        let challenge = try await challenge(name)
        let client = KmsHTTPClient(transport: transport, retry: retry, logger: logger)
        return try await client.sendAuthorized(
            operation, url: url, body: body, tokens: tokens, scope: challenge.scope,
            fetch: { [credentials] in try await credentials.fetchToken(for: challenge, client) },
            mapError: { status, responseBody in
                AzureKeyVault.error(
                    status: status, body: responseBody, operation: operation, key: name,
                    credentials: credentials.summary)
            })
    }

    /// Maps an error answer (`{"error": {"code", "message", "innererror": {"code"}}}`) to a code.
    static func error(status: Int, body: Data, operation: String, key: KeyVaultKeyName, credentials: String)
        -> DBKeyError
    {
        let error = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["error"] as? [String: Any]
        let code = error?["code"] as? String ?? ""
        let inner = (error?["innererror"] as? [String: Any])?["code"] as? String ?? ""
        let message = error?["message"] as? String ?? ""
        let what =
            "Key Vault \(operation) with \(key) failed with HTTP \(status)\(code.isEmpty ? "" : " \(code)")\(message.isEmpty ? "" : ": \(message)")"
        switch status {
        case 403 where inner == "KeyDisabled" || message.contains("disabled"):
            return DBKeyError(.kmsKeyDisabled, "\(what). Enable the key version, or rewrap under an enabled one.")
        case 400 where operation == "unwrapKey":
            return DBKeyError(
                .ciphertextInvalid, "\(what). The wrapped key was altered or belongs to another key or version.")
        default:
            return KmsHTTPStatus.error(
                status: status, what: what, tokenRefused: "The token of \(credentials) was refused.",
                accessDenied:
                    "Give \(credentials) the key operations get, wrapKey and unwrapKey (the role Key Vault Crypto Service Encryption User, or an access policy).",
                notFound: "Check the vault's host, the key's name and its version.")
        }
    }
}

/// What ``AzureKeyVault`` learns once and its copies share: each vault's challenge, each key's
/// type.
private final class VaultFacts: Sendable {
    private let challenges = Mutex<[String: AuthenticationChallenge]>([:])
    private let keyTypes = Mutex<[String: String]>([:])

    func challenge(of host: String) -> AuthenticationChallenge? { challenges.withLock { $0[host] } }
    func setChallenge(_ challenge: AuthenticationChallenge, for host: String) {
        challenges.withLock { $0[host] = challenge }
    }
    func keyType(of name: KeyVaultKeyName) -> String? { keyTypes.withLock { $0[name.description] } }
    func setKeyType(_ type: String, for name: KeyVaultKeyName) { keyTypes.withLock { $0[name.description] = type } }
}
