import Foundation
import Logging
import Synchronization
import KmsHTTP
import SQLCipherKeyManager

/// Vault's (or OpenBao's) Transit secrets engine: data keys generated and unwrapped by a named
/// Transit key that never leaves the server.
///
/// The key is named `MOUNT/keys/NAME` (`vault://transit/keys/app-db` on the command line). The
/// wrapped key is Transit's own `vault:vN:…` text, stored as is; `N` is the key version it was
/// made with.
///
/// The server, token and namespace come from the variables Vault's CLI reads —
/// `VAULT_ADDR`, `VAULT_TOKEN`, `VAULT_NAMESPACE`, `VAULT_MAX_RETRIES` (or OpenBao's `BAO_*`) —
/// the token otherwise from `DBKEY_VAULT_TOKEN_FILE` or `~/.vault-token`.
///
/// ```swift
/// let kms = try VaultTransit.fromEnvironment(logger: logger)
/// let manager = DatabaseKeyManager(
///     databasePath: path, kms: kms,
///     configuration: .init(kekId: "transit/keys/app-db", encryptionContext: ["purpose": "notes"]),
///     logger: logger)
/// ```
///
/// The encryption context is always enforced: for a key created with `derived=true` it is sent
/// as Transit's `context` (a key is derived from it), for any other key as `associated_data`
/// (authenticated by AES-GCM), because a key that is not derived silently ignores `context`.
/// Both carry the bytes `dbkey` NUL followed by ``EncryptionContext/canonicalEncoding``. The
/// token needs `update` on `MOUNT/datakey/plaintext/NAME`, `MOUNT/decrypt/NAME`,
/// `MOUNT/encrypt/NAME` and `MOUNT/rewrap/NAME`, and `read` on `MOUNT/keys/NAME`.
///
/// 5xx answers, 429 and connection failures are retried as ``RetryPolicy`` says.
public struct VaultTransit: ServerSideRewrapping, EnvironmentConfigurable {
    /// `vault`.
    public let providerName = "vault"

    let address: URL
    let token: SecureBuffer
    let namespace: String?
    let retry: RetryPolicy
    let transport: any KmsTransport
    let logger: Logger
    /// Whether each key is derived, learned from its first `keys/NAME` read.
    private let derivedKeys = DerivedKeys()

    /// Creates the provider.
    ///
    /// - Parameters:
    ///   - address: The server, as in `VAULT_ADDR`: `https://vault.example.com:8200`.
    ///   - token: The Vault token, sent as `X-Vault-Token`.
    ///   - namespace: The namespace (`X-Vault-Namespace`), if any.
    public init(
        address: URL,
        token: SecureBuffer,
        namespace: String? = nil,
        retry: RetryPolicy = RetryPolicy(),
        logger: Logger
    ) {
        self.init(
            address: address, token: token, namespace: namespace, retry: retry, transport: URLSessionKmsTransport(),
            logger: logger)
    }

    init(
        address: URL,
        token: SecureBuffer,
        namespace: String?,
        retry: RetryPolicy,
        transport: any KmsTransport,
        logger: Logger
    ) {
        self.address = address
        self.token = token
        self.namespace = namespace
        self.retry = retry
        self.transport = transport
        self.logger = logger
    }

    /// The variable naming a file that holds the Vault token, read when `VAULT_TOKEN` is unset.
    public static let tokenFileVariable = "DBKEY_VAULT_TOKEN_FILE"

    /// Makes the Vault Transit provider from the environment (see ``fromEnvironment(_:logger:)``).
    public static let factory = KmsProviderFactory(
        VaultTransit.self, providerName: "vault", uriScheme: "vault", uriForms: ["vault://MOUNT/keys/NAME"],
        help:
            "Vault or OpenBao Transit: $VAULT_ADDR, and $VAULT_TOKEN, $DBKEY_VAULT_TOKEN_FILE or ~/.vault-token; $VAULT_NAMESPACE"
    )

    /// Configures the provider as Vault's CLI would be: `VAULT_ADDR` (default
    /// `https://127.0.0.1:8200`), `VAULT_TOKEN` or the token file (``tokenFileVariable``, else
    /// `~/.vault-token`), `VAULT_NAMESPACE`, `VAULT_MAX_RETRIES` (default 2) and
    /// `DBKEY_KMS_TIMEOUT_SECONDS`. OpenBao's `BAO_ADDR`, `BAO_TOKEN` and `BAO_NAMESPACE` are
    /// read when the `VAULT_` ones are unset.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsAccessDenied`` when no token is found,
    ///   ``DBKeyError/Code-swift.struct/invalidConfiguration`` for an invalid address or value,
    ///   key-file codes for a token file others can read.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process,
        logger: Logger
    ) throws -> VaultTransit {
        func variable(_ name: String) -> String? {
            (environment["VAULT_\(name)"] ?? environment["BAO_\(name)"]).flatMap { $0.isEmpty ? nil : $0 }
        }
        let addressText = variable("ADDR") ?? "https://127.0.0.1:8200"
        guard let address = URL(string: addressText), address.scheme == "https" || address.scheme == "http",
            address.host != nil
        else {
            throw DBKeyError(.invalidConfiguration, "VAULT_ADDR \"\(addressText)\" is not an http(s) URL.")
        }
        let token: SecureBuffer
        if let text = variable("TOKEN") {
            token = try Passphrase.fromText(text, kind: "Vault token")
        } else if let path = environment[tokenFileVariable] {
            token = try Passphrase.fromFile(path, kind: "Vault token")
        } else if let home = environment["HOME"], FileManager.default.fileExists(atPath: home + "/.vault-token") {
            token = try Passphrase.fromFile(home + "/.vault-token", kind: "Vault token")
        } else {
            throw DBKeyError(
                .kmsAccessDenied,
                "No Vault token: set VAULT_TOKEN, or \(tokenFileVariable) to a file holding it, or log in with `vault login`."
            )
        }
        let retry = try RetryPolicy.fromEnvironment(
            environment, attemptsVariable: "VAULT_MAX_RETRIES", countsFirstAttempt: false)
        return VaultTransit(
            address: address, token: token, namespace: variable("NAMESPACE"), retry: retry, logger: logger)
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let key = try TransitKeyPath(kekId)
        var body = try await contextFields(key, context)
        body["bits"] = 256
        var response = try await call("datakey", key, path: key.apiPath("datakey/plaintext"), body: .object(body))
        let plaintext = try VaultTransit.takePlaintext(from: &response, key: key)
        return DataKey(plaintext: plaintext, wrapped: try VaultTransit.ciphertext(in: response), kekId: key.description)
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        let key = try TransitKeyPath(kekId)
        guard let version = VaultTransit.transitVersion(of: wrapped) else {
            throw DBKeyError(.ciphertextInvalid, "The wrapped data key is not a Transit ciphertext (vault:vN:…).")
        }
        var body = try await contextFields(key, context)
        body["ciphertext"] = wrapped.encoded
        var response = try await call(
            "decrypt", key, path: key.apiPath("decrypt"), body: .object(body), wrappedVersion: version)
        return try VaultTransit.takePlaintext(from: &response, key: key)
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        let transitKey = try TransitKeyPath(kekId)
        let body = try await contextFields(transitKey, context)
        // The plaintext must travel in base64 in the body; it is wiped once the call is over.
        let response = try await call(
            "encrypt", transitKey, path: transitKey.apiPath("encrypt"),
            body: .withSecret(body, name: "plaintext", value: key.base64Encoded()))
        return try VaultTransit.ciphertext(in: response)
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let key = try TransitKeyPath(kekId)
        let clock = ContinuousClock()
        let start = clock.now
        let info = try await keyInfo(key)
        let latency = clock.now - start
        guard info["supports_encryption"] as? Bool ?? true, info["supports_decryption"] as? Bool ?? true else {
            throw DBKeyError(
                .invalidConfiguration,
                "The Transit key \(key) (type \(info["type"] as? String ?? "?")) cannot encrypt and decrypt; use an aes256-gcm96 key."
            )
        }
        return KmsHealth(
            kekId: key.description, keyState: "available", latency: latency,
            latestKekVersion: (info["latest_version"] as? Int).map(String.init))
    }

    /// The `N` of a `vault:vN:…` ciphertext.
    public func kekVersion(of wrapped: WrappedDataKey) -> String? {
        VaultTransit.transitVersion(of: wrapped).map(String.init)
    }

    @available(
        *, deprecated, renamed: "kekVersion(of:)", message: "Versions are opaque strings: Key Vault's are not numbers."
    )
    public func keyVersion(of wrapped: WrappedDataKey) -> Int? { VaultTransit.transitVersion(of: wrapped) }

    /// The `N` of a `vault:vN:…` ciphertext, a positive number.
    static func transitVersion(of wrapped: WrappedDataKey) -> Int? {
        let parts = wrapped.encoded.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "vault", parts[1].hasPrefix("v"), !parts[2].isEmpty else { return nil }
        return Int(parts[1].dropFirst()).flatMap { $0 > 0 ? $0 : nil }
    }

    /// Transit's `rewrap` when both ends are the same derived key: the key comes back wrapped
    /// under its newest version without leaving the server.
    ///
    /// `nil` for two different keys, and for a key that is not derived: `rewrap` takes no
    /// `associated_data` (OpenBao 2.7 answers "message authentication failed"), so the caller
    /// unwraps and wraps again.
    public func serverSideRewrap(
        _ wrapped: WrappedDataKey,
        from sourceKekId: String,
        to destinationKekId: String,
        context: EncryptionContext
    ) async throws -> WrappedDataKey? {
        let key = try TransitKeyPath(destinationKekId)
        guard try TransitKeyPath(sourceKekId) == key, try await isDerived(key),
            let version = VaultTransit.transitVersion(of: wrapped)
        else { return nil }
        var body = try await contextFields(key, context)
        body["ciphertext"] = wrapped.encoded
        let response = try await call(
            "rewrap", key, path: key.apiPath("rewrap"), body: .object(body), wrappedVersion: version)
        return try VaultTransit.ciphertext(in: response)
    }

    // MARK: - The protocol

    /// The bytes Transit binds a wrap to: a fixed prefix, so that DBKey's contexts can never
    /// equal another application's on a shared key, then the canonical encoding.
    static func transitContext(_ context: EncryptionContext) -> String {
        Base64.encode(Array("dbkey".utf8) + [0] + context.canonicalEncoding)
    }

    private func contextFields(_ key: TransitKeyPath, _ context: EncryptionContext) async throws -> [String: Any] {
        [try await isDerived(key) ? "context" : "associated_data": VaultTransit.transitContext(context)]
    }

    private func isDerived(_ key: TransitKeyPath) async throws -> Bool {
        if let known = derivedKeys[key] { return known }
        return try await keyInfo(key)["derived"] as? Bool ?? false
    }

    /// `GET MOUNT/keys/NAME`'s `data`, remembering whether the key is derived.
    private func keyInfo(_ key: TransitKeyPath) async throws -> [String: Any] {
        let response = try await call("read key", key, path: key.apiPath("keys"), body: nil)
        let info = try VaultTransit.data(of: response)
        let derived = info["derived"] as? Bool ?? false
        derivedKeys[key] = derived
        return info
    }

    enum Body {
        case object([String: Any])
        case withSecret([String: Any], name: String, value: SecureBuffer)
    }

    /// Sends one request (a GET when `body` is `nil`), retrying what is retryable, and returns
    /// the successful body.
    private func call(
        _ operation: String,
        _ key: TransitKeyPath,
        path: String,
        body: Body?,
        wrappedVersion: Int? = nil
    ) async throws -> Data {
        guard let url = URL(string: path, relativeTo: address)?.absoluteURL else {
            throw DBKeyError(.invalidConfiguration, "Cannot make a URL of \(address) and \(path).")
        }
        // An HTTP header is text: the token becomes a String only for the length of the call.
        var headers = [(name: "X-Vault-Token", value: token.withUnsafeBytes { String(decoding: $0, as: UTF8.self) })]
        if let namespace { headers.append((name: "X-Vault-Namespace", value: namespace)) }
        if body != nil { headers.append((name: "Content-Type", value: "application/json")) }
        let client = KmsHTTPClient(transport: transport, retry: retry, logger: logger)
        let httpBody: KmsHTTPClient.Body =
            switch body {
            case .none: .none
            case .object(let object): .json(object)
            case .withSecret(let object, let name, let value): .jsonWithSecret(object, name: name, value: value)
            }
        return try await client.send(
            operation,
            method: body == nil ? "GET" : "POST",
            url: url,
            body: httpBody,
            headers: { _ in headers },
            mapError: { status, responseBody in
                VaultTransit.error(
                    status: status, body: responseBody, operation: operation, key: key,
                    policyPath: "\(body == nil ? "read" : "update") on \(path.dropFirst("/v1/".count))",
                    wrappedVersion: wrappedVersion)
            }
        )
    }

    /// Maps an error answer (`{"errors": [...]}`) to a code.
    static func error(
        status: Int,
        body: Data,
        operation: String,
        key: TransitKeyPath,
        policyPath: String,
        wrappedVersion: Int?
    ) -> DBKeyError {
        let errors = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["errors"] as? [String] ?? []
        let detail = errors.joined(separator: "; ")
        let what =
            "Vault Transit \(operation) on \(key) failed with HTTP \(status)\(detail.isEmpty ? "" : ": \(detail)")"
        if detail.contains("disallowed by policy (too old)") {
            let version = wrappedVersion.map { "version \($0)" } ?? "a version"
            return DBKeyError(
                .kmsKeyDisabled,
                "\(what). The data key is wrapped under \(version) of \(key), below the key's min_decryption_version. Rewrap it: lower min_decryption_version to \(wrappedVersion.map(String.init) ?? "that version") for a moment, run `dbkey rewrap DATABASE` (it rewraps under the newest version), then raise it again."
            )
        }
        let notFound = "Check the key name, the mount (\(key.mount)), VAULT_ADDR and VAULT_NAMESPACE."
        if detail.contains("encryption key not found") && status != 403 {
            return DBKeyError(.kmsKeyNotFound, "\(what). \(notFound)")
        }
        if status != 403 && (detail.contains("authentication failed") || detail.contains("invalid ciphertext")) {
            return DBKeyError(
                .ciphertextInvalid,
                "\(what). The wrapped key was altered, belongs to another Transit key, or the encryption context differs."
            )
        }
        return KmsHTTPStatus.error(
            status: status, what: what,
            accessDenied: "Check the token (VAULT_TOKEN) and that its policy allows \(policyPath).", notFound: notFound)
    }

    /// The `plaintext` field, straight into secure memory; it must be a 32-byte key.
    static func takePlaintext(from response: inout Data, key: TransitKeyPath) throws -> SecureBuffer {
        guard let plaintext = JSONSecretField.take("plaintext", from: &response) else {
            throw DBKeyError(.kmsUnavailable, "Vault answered without a plaintext for \(key).")
        }
        guard plaintext.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .ciphertextInvalid, "The Transit ciphertext holds \(plaintext.count) bytes, not a 32-byte data key.")
        }
        return plaintext
    }

    static func data(of response: Data) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: response) as? [String: Any],
            let data = object["data"] as? [String: Any]
        else {
            throw DBKeyError(.kmsUnavailable, "Vault answered with a body that has no data object.")
        }
        return data
    }

    static func ciphertext(in response: Data) throws -> WrappedDataKey {
        guard let text = try data(of: response)["ciphertext"] as? String, text.hasPrefix("vault:v") else {
            throw DBKeyError(.kmsUnavailable, "Vault answered without a vault:vN: ciphertext.")
        }
        return WrappedDataKey(encoded: text)
    }
}

/// What ``VaultTransit`` has learned about whether its keys are derived, shared by its copies.
private final class DerivedKeys: Sendable {
    private let flags = Mutex<[TransitKeyPath: Bool]>([:])

    subscript(key: TransitKeyPath) -> Bool? {
        get { flags.withLock { $0[key] } }
        set { flags.withLock { $0[key] = newValue } }
    }
}
