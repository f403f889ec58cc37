import Foundation
import KmsHTTP
import Logging
import SQLCipherKeyManager

/// Google Cloud KMS: data keys wrapped and unwrapped by a symmetric Cloud KMS key that never
/// leaves Google, over the REST v1 API (`:encrypt`, `:decrypt`).
///
/// The key is named by its resource name, `projects/P/locations/L/keyRings/R/cryptoKeys/K`
/// (`gcp-kms://projects/…` on the command line). Cloud KMS has no GenerateDataKey: the data key
/// comes from this system's random generator and is wrapped with `encrypt`. The wrapped key is
/// stored as `gcpkms:vN:CIPHERTEXT`, where `N` is the key version `encrypt` used (from its
/// answer's `name`; `decrypt` does not say it), which `dbkey status` shows.
///
/// ```swift
/// let kms = try GoogleCloudKms.fromEnvironment(logger: logger)
/// let manager = DatabaseKeyManager(
///     databasePath: path, kms: kms,
///     configuration: .init(
///         kekId: "projects/acme/locations/global/keyRings/apps/cryptoKeys/notes-db",
///         encryptionContext: ["purpose": "notes"]),
///     logger: logger)
/// ```
///
/// The encryption context travels as `additionalAuthenticatedData` (the bytes `dbkey`, NUL,
/// ``EncryptionContext/canonicalEncoding``), which Cloud KMS binds to the ciphertext. Every
/// byte field is sent with its CRC32C and every answer's checksums are checked, as Google asks
/// of callers. The credentials need `cloudkms.cryptoKeyVersions.useToEncrypt` and
/// `useToDecrypt` on the key (`roles/cloudkms.cryptoKeyEncrypterDecrypter`), and
/// `cloudkms.cryptoKeys.get` for `dbkey status` (`roles/cloudkms.viewer`).
///
/// 429 and 5xx answers, timeouts and refused connections are retried as ``RetryPolicy`` says.
public struct GoogleCloudKms: EnvironmentConfigurable {
    /// `gcp`.
    public let providerName = "gcp"

    let endpoint: URL
    let credentials: GoogleCredentials
    let retry: RetryPolicy
    let transport: any KmsTransport
    let logger: Logger
    private let tokens = BearerTokenCache()

    /// The variable naming another service endpoint (a Private Service Connect endpoint, a test
    /// server).
    public static let endpointVariable = "DBKEY_GCP_KMS_ENDPOINT"

    /// Creates the provider.
    ///
    /// - Parameters:
    ///   - endpoint: The service; `nil` for `https://cloudkms.googleapis.com`.
    public init(
        credentials: GoogleCredentials,
        endpoint: URL? = nil,
        retry: RetryPolicy = RetryPolicy(),
        logger: Logger
    ) {
        self.init(
            credentials: credentials, endpoint: endpoint, retry: retry, transport: URLSessionKmsTransport(),
            logger: logger)
    }

    init(
        credentials: GoogleCredentials,
        endpoint: URL?,
        retry: RetryPolicy,
        transport: any KmsTransport,
        logger: Logger
    ) {
        self.credentials = credentials
        self.endpoint = endpoint ?? URL(string: "https://cloudkms.googleapis.com")!
        self.retry = retry
        self.transport = transport
        self.logger = logger
    }

    /// Makes the Cloud KMS provider from the environment (see ``fromEnvironment(_:logger:)``).
    public static let factory = KmsProviderFactory(
        GoogleCloudKms.self, providerName: "gcp", uriScheme: "gcp-kms",
        uriForms: ["gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K"],
        help:
            "Google Cloud KMS: credentials from $GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default credentials or the metadata server; $DBKEY_GCP_KMS_ENDPOINT"
    )

    /// Configures the provider: credentials as ``GoogleCredentials/fromEnvironment(_:)`` finds
    /// them, the endpoint from ``endpointVariable`` (`https://`, or `http://` to a loopback
    /// address only), `DBKEY_KMS_MAX_ATTEMPTS` (default 3) and `DBKEY_KMS_TIMEOUT_SECONDS`.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for an invalid endpoint
    ///   or key file; key-file codes for a key file others can read.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process,
        logger: Logger
    ) throws -> GoogleCloudKms {
        let endpoint = try environment[endpointVariable].flatMap { $0.isEmpty ? nil : $0 }.map {
            try EndpointURL.requiringTLS($0, what: endpointVariable)
        }
        let retry = try RetryPolicy.fromEnvironment(
            environment, attemptsVariable: "DBKEY_KMS_MAX_ATTEMPTS", countsFirstAttempt: true)
        return GoogleCloudKms(
            credentials: try GoogleCredentials.fromEnvironment(environment), endpoint: endpoint, retry: retry,
            logger: logger)
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let key = try SecureBuffer.random(count: RawKeyText.keyByteCount)
        return DataKey(plaintext: key, wrapped: try await encrypt(key, kekId: kekId, context: context), kekId: kekId)
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        let name = try CloudKmsKeyName(kekId)
        let aad = GoogleCloudKms.additionalData(context)
        let fields: [String: Any] = [
            "additionalAuthenticatedData": Base64.encode(aad),
            "additionalAuthenticatedDataCrc32c": String(CRC32C.checksum(aad)),
            "plaintextCrc32c": String(key.withUnsafeBytes { CRC32C.checksum($0) }),
        ]
        // The plaintext must travel in base64 in the body; it is wiped once the call is over.
        let response = try await call(
            "encrypt", name, path: ":encrypt",
            body: .jsonWithSecret(fields, name: "plaintext", value: key.base64Encoded()))
        let answer = try GoogleCloudKms.object(response)
        guard answer["verifiedPlaintextCrc32c"] as? Bool == true,
            answer["verifiedAdditionalAuthenticatedDataCrc32c"] as? Bool == true
        else {
            throw DBKeyError(
                .kmsUnavailable,
                "Cloud KMS did not confirm the checksums of the request to encrypt with \(name): it may have been altered in transit. Try again."
            )
        }
        guard let ciphertext = (answer["ciphertext"] as? String).flatMap(Base64.decode),
            GoogleCloudKms.checksum(answer["ciphertextCrc32c"]) == CRC32C.checksum(ciphertext)
        else {
            throw DBKeyError(
                .kmsUnavailable,
                "Cloud KMS's ciphertext from \(name) does not match its checksum: it was altered in transit. Try again."
            )
        }
        guard let version = (answer["name"] as? String).flatMap(name.versionNumber(of:)) else {
            throw DBKeyError(.kmsUnavailable, "Cloud KMS's answer to encrypt with \(name) names no version of it.")
        }
        return WrappedDataKey(encoded: "gcpkms:v\(version):\(Base64.encode(ciphertext))")
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        let name = try CloudKmsKeyName(kekId)
        guard let ciphertext = GoogleCloudKms.ciphertext(of: wrapped) else {
            throw DBKeyError(.ciphertextInvalid, "The wrapped data key is not a Cloud KMS ciphertext (gcpkms:vN:…).")
        }
        let aad = GoogleCloudKms.additionalData(context)
        var response = try await call(
            "decrypt", name, path: ":decrypt",
            body: .json([
                "ciphertext": Base64.encode(ciphertext), "ciphertextCrc32c": String(CRC32C.checksum(ciphertext)),
                "additionalAuthenticatedData": Base64.encode(aad),
                "additionalAuthenticatedDataCrc32c": String(CRC32C.checksum(aad)),
            ]))
        defer { response.wipe() }
        guard let plaintext = JSONSecretField.take("plaintext", from: &response) else {
            throw DBKeyError(.kmsUnavailable, "Cloud KMS answered without a plaintext for \(name).")
        }
        let answer = try GoogleCloudKms.object(response)
        guard GoogleCloudKms.checksum(answer["plaintextCrc32c"]) == plaintext.withUnsafeBytes({ CRC32C.checksum($0) })
        else {
            throw DBKeyError(
                .kmsUnavailable,
                "Cloud KMS's plaintext from \(name) does not match its checksum: it was altered in transit. Try again.")
        }
        guard plaintext.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .ciphertextInvalid, "The Cloud KMS ciphertext holds \(plaintext.count) bytes, not a 32-byte data key.")
        }
        return plaintext
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let name = try CloudKmsKeyName(kekId)
        let clock = ContinuousClock()
        let start = clock.now
        let key = try GoogleCloudKms.object(try await call("get", name, path: "", body: nil))
        let latency = clock.now - start
        let purpose = key["purpose"].map { "\($0)" } ?? "?"
        guard ["ENCRYPT_DECRYPT", "1"].contains(purpose) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The Cloud KMS key \(name) has purpose \(purpose); DBKey needs a symmetric ENCRYPT_DECRYPT key.")
        }
        let primary = key["primary"] as? [String: Any] ?? [:]
        let state = primary["state"].map { "\($0)" } ?? "?"
        guard ["ENABLED", "1"].contains(state) else {
            throw DBKeyError(
                .kmsKeyDisabled,
                "The primary version of the Cloud KMS key \(name) is \(state); enable it or make an enabled version primary."
            )
        }
        return KmsHealth(
            kekId: name.description, keyState: "ENABLED", latency: latency,
            latestKekVersion: (primary["name"] as? String).flatMap(name.versionNumber(of:)).map(String.init))
    }

    /// The `N` of a `gcpkms:vN:…` wrapped key: the key version that wrapped it.
    public func kekVersion(of wrapped: WrappedDataKey) -> String? {
        GoogleCloudKms.parts(of: wrapped).map { String($0.version) }
    }

    @available(
        *, deprecated, renamed: "kekVersion(of:)", message: "Versions are opaque strings: Key Vault's are not numbers."
    )
    public func keyVersion(of wrapped: WrappedDataKey) -> Int? { GoogleCloudKms.parts(of: wrapped)?.version }

    // MARK: - The protocol

    /// The bytes bound to a wrap: a fixed prefix, so that DBKey's data can never equal another
    /// application's on a shared key, then the canonical encoding of the context.
    static func additionalData(_ context: EncryptionContext) -> [UInt8] {
        Array("dbkey".utf8) + [0] + context.canonicalEncoding
    }

    static func parts(of wrapped: WrappedDataKey) -> (version: Int, ciphertext: [UInt8])? {
        let parts = wrapped.encoded.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "gcpkms", parts[1].hasPrefix("v"),
            let version = Int(parts[1].dropFirst()), version > 0,
            let ciphertext = Base64.decode(String(parts[2])), !ciphertext.isEmpty
        else { return nil }
        return (version, ciphertext)
    }

    static func ciphertext(of wrapped: WrappedDataKey) -> [UInt8]? { parts(of: wrapped)?.ciphertext }

    /// An int64 checksum field: JSON carries it as a string.
    static func checksum(_ value: Any?) -> UInt32? {
        (value as? String).flatMap { UInt32($0) } ?? (value as? Int).flatMap { UInt32(exactly: $0) }
    }

    static func object(_ response: Data) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: response) as? [String: Any] else {
            throw DBKeyError(.kmsUnavailable, "Cloud KMS answered with a body that is not a JSON object.")
        }
        return object
    }

    /// Sends one request (a GET when `body` is `nil`) with a bearer token, and returns the
    /// successful body. A refused token is forgotten, so that the next call fetches another.
    private func call(_ operation: String, _ key: CloudKmsKeyName, path: String, body: KmsHTTPClient.Body?) async throws
        -> Data
    {
        guard let url = URL(string: "v1/\(key)\(path)", relativeTo: endpoint)?.absoluteURL else {
            throw DBKeyError(.invalidConfiguration, "Cannot make a URL of \(endpoint) and \(key).")
        }
        let client = KmsHTTPClient(transport: transport, retry: retry, logger: logger)
        return try await client.sendAuthorized(
            operation, url: url, body: body, tokens: tokens, scope: GoogleCredentials.scope,
            fetch: { [credentials] in try await credentials.fetchToken(client) },
            headers: credentials.quotaProject.map { [("x-goog-user-project", $0)] } ?? [],
            mapError: { status, responseBody in
                GoogleCloudKms.error(
                    status: status, body: responseBody, operation: operation, key: key,
                    credentials: credentials.summary)
            })
    }

    /// Maps an error answer (`{"error": {"code", "message", "status"}}`) to a code.
    static func error(status: Int, body: Data, operation: String, key: CloudKmsKeyName, credentials: String)
        -> DBKeyError
    {
        let error = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["error"] as? [String: Any]
        let grpcStatus = error?["status"] as? String ?? ""
        let message = error?["message"] as? String ?? ""
        let what =
            "Cloud KMS \(operation) with \(key) failed with HTTP \(status)\(grpcStatus.isEmpty ? "" : " \(grpcStatus)")\(message.isEmpty ? "" : ": \(message)")"
        switch status {
        case 400 where grpcStatus == "FAILED_PRECONDITION":
            return DBKeyError(
                .kmsKeyDisabled,
                "\(what). Enable the key version (or restore it, if destruction is only scheduled), or rewrap under an enabled version."
            )
        case 400 where message.contains("checksum"):
            return DBKeyError(.kmsUnavailable, "\(what). The request was altered in transit; try again.")
        case 400 where operation == "decrypt":
            return DBKeyError(
                .ciphertextInvalid,
                "\(what). The wrapped key was altered, belongs to another key, or the encryption context differs.")
        default:
            return KmsHTTPStatus.error(
                status: status, what: what, tokenRefused: "The token from \(credentials) was refused.",
                accessDenied:
                    "Grant \(credentials) roles/cloudkms.cryptoKeyEncrypterDecrypter on the key (and roles/cloudkms.viewer for status).",
                notFound: "Check the project, location, key ring and key names.")
        }
    }
}
