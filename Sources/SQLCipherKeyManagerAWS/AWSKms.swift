import Foundation
import Logging
import KmsHTTP
import SQLCipherKeyManager

/// AWS KMS: data keys generated and unwrapped by a KMS key that never leaves AWS, over the KMS
/// JSON 1.1 protocol (`X-Amz-Target: TrentService.*`) signed with Signature Version 4.
///
/// Credentials, region and endpoint are found as the AWS SDKs find them: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; the shared credentials and config files with
/// `AWS_PROFILE`; `AWS_REGION` / `AWS_DEFAULT_REGION` (a key ARN's own region wins);
/// `AWS_ENDPOINT_URL_KMS` / `AWS_ENDPOINT_URL` for another endpoint; `AWS_MAX_ATTEMPTS` and
/// `DBKEY_KMS_TIMEOUT_SECONDS` for the retry policy.
///
/// ```swift
/// let kms = try AWSKms.fromEnvironment(logger: logger)
/// let manager = DatabaseKeyManager(
///     databasePath: path, kms: kms,
///     configuration: .init(kekId: "alias/app-db", encryptionContext: ["purpose": "notes"]),
///     logger: logger)
/// ```
///
/// Throttling, 5xx answers, timeouts and refused connections are retried with exponential
/// backoff and jitter (``RetryPolicy``). Every KMS operation used here is free of side effects
/// on the KMS, so a retry can never apply anything twice.
public struct AWSKms: ServerSideRewrapping, EnvironmentConfigurable {
    /// `aws`.
    public let providerName = "aws"

    let credentials: AWSCredentialProvider
    let defaultRegion: String?
    let endpointOverride: URL?
    let retry: RetryPolicy
    let transport: any KmsTransport
    let logger: Logger

    /// Creates the provider.
    ///
    /// - Parameters:
    ///   - region: The region for aliases and key ids; a key ARN's own region wins.
    ///   - endpoint: Another endpoint (a VPC endpoint, a test server); `nil` for
    ///     `https://kms.REGION.amazonaws.com`.
    public init(
        credentials: AWSCredentials,
        region: String?,
        endpoint: URL? = nil,
        retry: RetryPolicy = RetryPolicy(),
        logger: Logger
    ) {
        self.init(
            credentials: AWSCredentialProvider(credentials), region: region, endpoint: endpoint, retry: retry,
            logger: logger)
    }

    /// Creates the provider with credentials from `credentials`, refreshed as they expire.
    public init(
        credentials: AWSCredentialProvider,
        region: String?,
        endpoint: URL? = nil,
        retry: RetryPolicy = RetryPolicy(),
        logger: Logger
    ) {
        self.init(
            credentials: credentials, region: region, endpoint: endpoint, retry: retry,
            transport: URLSessionKmsTransport(), logger: logger)
    }

    init(
        credentials: AWSCredentials,
        region: String?,
        endpoint: URL?,
        retry: RetryPolicy,
        transport: any KmsTransport,
        logger: Logger
    ) {
        self.init(
            credentials: AWSCredentialProvider(credentials), region: region, endpoint: endpoint, retry: retry,
            transport: transport, logger: logger)
    }

    init(
        credentials: AWSCredentialProvider,
        region: String?,
        endpoint: URL?,
        retry: RetryPolicy,
        transport: any KmsTransport,
        logger: Logger
    ) {
        self.credentials = credentials
        self.defaultRegion = region
        self.endpointOverride = endpoint
        self.retry = retry
        self.transport = transport
        self.logger = logger
    }

    /// Makes the AWS KMS provider from the environment (see ``fromEnvironment(_:logger:)``); claims
    /// seven-field `.key` files whose `kek_id` is a key ARN or alias.
    public static let factory = KmsProviderFactory(
        AWSKms.self,
        providerName: "aws",
        uriScheme: "aws-kms",
        uriForms: ["aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID", "aws-kms://alias/NAME"],
        help:
            "credentials, region and endpoint as the AWS SDKs find them; $AWS_MAX_ATTEMPTS and $DBKEY_KMS_TIMEOUT_SECONDS for retries",
        claimsLegacyKekId: isAwsKekId
    )

    /// Claims seven-field `.key` files whose `kek_id` is a KMS key ARN or alias.
    public func claimsLegacyKekId(_ kekId: String) -> Bool { AWSKms.isAwsKekId(kekId) }

    @Sendable static func isAwsKekId(_ kekId: String) -> Bool {
        kekId.hasPrefix("arn:aws:kms:") || kekId.hasPrefix("alias/")
    }

    /// Configures the provider from the environment and the shared AWS files.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsAccessDenied`` when no credentials are found,
    ///   ``DBKeyError/Code-swift.struct/invalidConfiguration`` for an invalid endpoint URL.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process,
        logger: Logger
    ) throws -> AWSKms {
        let aws = AWSEnvironment(variables: environment)
        var endpoint: URL?
        if let text = aws.endpointOverride {
            guard let url = URL(string: text), url.scheme == "https" || url.scheme == "http", url.host != nil else {
                throw DBKeyError(.invalidConfiguration, "The KMS endpoint \"\(text)\" is not an http(s) URL.")
            }
            endpoint = url
        }
        let retry = try RetryPolicy.fromEnvironment(
            environment, attemptsVariable: "AWS_MAX_ATTEMPTS", countsFirstAttempt: true)
        let region = try aws.region()
        return AWSKms(
            credentials: try aws.credentialProvider(region: region), region: region, endpoint: endpoint, retry: retry,
            logger: logger)
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        var response = try await call(
            "GenerateDataKey",
            kekId: kekId,
            ["KeyId": kekId, "KeySpec": "AES_256", "EncryptionContext": context.dictionary]
        )
        let plaintext = try AWSKms.takePlaintext(from: &response)
        let fields = try AWSKms.fields(of: response)
        return DataKey(
            plaintext: plaintext, wrapped: try AWSKms.ciphertext(fields), kekId: fields["KeyId"] as? String ?? kekId)
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        guard wrapped.base64DecodedBytes != nil else {
            throw DBKeyError(.ciphertextInvalid, "The wrapped data key is not a base64 AWS KMS CiphertextBlob.")
        }
        var response = try await call(
            "Decrypt",
            kekId: kekId,
            ["CiphertextBlob": wrapped.encoded, "KeyId": kekId, "EncryptionContext": context.dictionary]
        )
        return try AWSKms.takePlaintext(from: &response)
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        // The request body must hold the key in base64: URLSession takes only Data. It is wiped
        // as soon as the exchange is over. Prefer ``reEncrypt(_:from:to:context:)`` between AWS keys.
        let encoded = key.base64Encoded()
        let response = try await call("Encrypt", kekId: kekId, secretField: ("Plaintext", encoded)) {
            ["KeyId": kekId, "EncryptionContext": context.dictionary]
        }
        return try AWSKms.ciphertext(try AWSKms.fields(of: response))
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let clock = ContinuousClock()
        let start = clock.now
        let response = try await call("DescribeKey", kekId: kekId, ["KeyId": kekId])
        let latency = clock.now - start
        let metadata = try AWSKms.fields(of: response)["KeyMetadata"] as? [String: Any] ?? [:]
        let state = metadata["KeyState"] as? String ?? ((metadata["Enabled"] as? Bool) == true ? "Enabled" : "Unknown")
        guard state == "Enabled" else {
            throw DBKeyError(
                .kmsKeyDisabled, "The KMS key \(kekId) is \(state); enable it (or cancel its deletion) in AWS KMS.")
        }
        return KmsHealth(kekId: metadata["Arn"] as? String ?? kekId, keyState: state, latency: latency)
    }

    /// Re-encrypts a wrapped key under another AWS KMS key without the plaintext leaving KMS
    /// (`ReEncrypt`).
    ///
    /// - Returns: The new wrapped key and the destination key's ARN.
    public func reEncrypt(
        _ wrapped: WrappedDataKey,
        from sourceKekId: String,
        to destinationKekId: String,
        context: EncryptionContext
    ) async throws -> (wrapped: WrappedDataKey, kekId: String) {
        let response = try await call(
            "ReEncrypt",
            kekId: destinationKekId,
            [
                "CiphertextBlob": wrapped.encoded, "SourceKeyId": sourceKekId, "DestinationKeyId": destinationKekId,
                "SourceEncryptionContext": context.dictionary, "DestinationEncryptionContext": context.dictionary,
            ]
        )
        let fields = try AWSKms.fields(of: response)
        return (try AWSKms.ciphertext(fields), fields["KeyId"] as? String ?? destinationKekId)
    }

    /// ``reEncrypt(_:from:to:context:)``: any AWS key to any other.
    public func serverSideRewrap(
        _ wrapped: WrappedDataKey,
        from sourceKekId: String,
        to destinationKekId: String,
        context: EncryptionContext
    ) async throws -> WrappedDataKey? {
        try await reEncrypt(wrapped, from: sourceKekId, to: destinationKekId, context: context).wrapped
    }

    // MARK: - The protocol

    /// The region a request for `kekId` goes to: an ARN's own, else the configured one.
    func region(for kekId: String) throws -> String {
        let parts = kekId.split(separator: ":", omittingEmptySubsequences: false)
        if kekId.hasPrefix("arn:"), parts.count >= 6, !parts[3].isEmpty {
            return String(parts[3])
        }
        guard let defaultRegion else {
            throw DBKeyError(
                .invalidConfiguration,
                "No AWS region for the KMS key \(kekId): set AWS_REGION, or name the key by its ARN.")
        }
        return defaultRegion
    }

    private func call(_ operation: String, kekId: String, _ body: [String: Any]) async throws -> Data {
        try await call(operation, kekId: kekId, secretField: nil) { body }
    }

    /// Sends one operation, retrying what is retryable, and returns the successful body.
    private func call(
        _ operation: String,
        kekId: String,
        secretField: (name: String, value: SecureBuffer)?,
        _ body: () -> [String: Any]
    ) async throws -> Data {
        let region = try region(for: kekId)
        let endpoint = endpointOverride ?? URL(string: "https://kms.\(region).amazonaws.com/")!
        let signer = SigV4Signer(service: "kms", region: region)
        let client = KmsHTTPClient(transport: transport, retry: retry, logger: logger)
        let credentials = try await self.credentials.current(client)
        return try await client.send(
            operation,
            method: "POST",
            url: endpoint,
            body: secretField.map { .jsonWithSecret(body(), name: $0.name, value: $0.value) } ?? .json(body()),
            headers: { payload in
                signer.sign(
                    SigV4Request(
                        method: "POST",
                        path: endpoint.path.isEmpty ? "/" : endpoint.path,
                        query: "",
                        headers: [
                            (name: "Host", value: AWSKms.hostHeader(endpoint)),
                            (name: "Content-Type", value: "application/x-amz-json-1.1"),
                            (name: "X-Amz-Target", value: "TrentService.\(operation)"),
                        ],
                        body: Array(payload)
                    ),
                    credentials: credentials,
                    date: Date()
                ).headers
            },
            mapError: { status, body in AWSKms.error(status: status, body: body, operation: operation, kekId: kekId) }
        )
    }

    static func hostHeader(_ url: URL) -> String {
        guard let host = url.host else { return "" }
        return url.port.map { "\(host):\($0)" } ?? host
    }

    /// Maps an error answer — JSON `__type` from KMS, XML `<Code>` from some auth layers — to a code.
    static func error(status: Int, body: Data, operation: String, kekId: String) -> DBKeyError {
        let text = String(decoding: body.prefix(4096), as: UTF8.self)
        var type = ""
        var message = ""
        if let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] {
            type = (object["__type"] as? String ?? "").split(separator: "#").last.map(String.init) ?? ""
            message = object["message"] as? String ?? object["Message"] as? String ?? ""
        } else if let code = text.range(of: "<Code>").flatMap({ start in
            text.range(of: "</Code>", range: start.upperBound..<text.endIndex).map {
                String(text[start.upperBound..<$0.lowerBound])
            }
        }) {
            type = code
        }
        let what =
            "AWS KMS \(operation) on \(kekId) failed with \(type.isEmpty ? "HTTP \(status)" : type)\(message.isEmpty ? "" : ": \(message)")"
        switch type {
        case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
            "SignatureDoesNotMatch",
            "InvalidClientTokenId", "IncompleteSignature", "MissingAuthenticationTokenException",
            "ExpiredTokenException":
            return DBKeyError(.kmsAccessDenied, "\(what). Check the AWS credentials and the key policy.")
        case "NotFoundException":
            return DBKeyError(.kmsKeyNotFound, "\(what). Check the key ARN or alias and the region.")
        case "DisabledException", "KMSInvalidStateException":
            return DBKeyError(.kmsKeyDisabled, "\(what). Enable the key (or cancel its deletion) in AWS KMS.")
        case "InvalidCiphertextException", "IncorrectKeyException":
            return DBKeyError(
                .ciphertextInvalid,
                "\(what). The wrapped key was altered, belongs to another KMS key, or the encryption context differs."
            )
        case "ThrottlingException":
            return DBKeyError(.kmsUnavailable, "\(what). Try again later.").throttled(retryAfter: nil)
        case "KMSInternalException", "DependencyTimeoutException", "KeyUnavailableException", "LimitExceededException":
            return DBKeyError(.kmsUnavailable, "\(what). Try again later.")
        default:
            return KmsHTTPStatus.error(
                status: status, what: what, accessDenied: "Check the AWS credentials and the key policy.",
                notFound: "Check the key's ARN or alias and the region.")
        }
    }

    /// Decodes the `Plaintext` field straight into secure memory, then overwrites it in the
    /// response so that no JSON parser ever turns it into a `String`.
    static func takePlaintext(from response: inout Data) throws -> SecureBuffer {
        guard let plaintext = JSONSecretField.take("Plaintext", from: &response),
            plaintext.count == RawKeyText.keyByteCount
        else {
            throw DBKeyError(.kmsUnavailable, "AWS KMS answered without a 32-byte Plaintext key.")
        }
        return plaintext
    }

    static func fields(of response: Data) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: response) as? [String: Any] else {
            throw DBKeyError(.kmsUnavailable, "AWS KMS answered with a body that is not a JSON object.")
        }
        return object
    }

    static func ciphertext(_ fields: [String: Any]) throws -> WrappedDataKey {
        guard let blob = fields["CiphertextBlob"] as? String, !blob.isEmpty else {
            throw DBKeyError(.kmsUnavailable, "AWS KMS answered without a CiphertextBlob.")
        }
        return WrappedDataKey(encoded: blob)
    }
}
