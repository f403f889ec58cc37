/// A key management service that holds key-encryption keys (KEKs) and wraps data keys (DEKs)
/// under them.
///
/// The KEK never leaves the service: DBKey asks it for a new data key, for the plaintext of a
/// wrapped one, or to wrap a plaintext it already holds. The protocol is open: any type can be
/// a provider, registered with a manager through a ``KmsRegistry``. Every implementation in the
/// package — the local master key, AWS KMS, Vault and OpenBao Transit, PKCS#11, Google Cloud
/// KMS, Azure Key Vault and Managed HSM, a TPM 2.0 sealed key, `MockKms` — passes the public
/// conformance suite in the `SQLCipherKeyManagerConformance` product; so should yours (see
/// <doc:WritingAProvider> and <doc:KeyManagementProviders>).
///
/// ```swift
/// let kms = try LocalKms.fromEnvironment(logger: logger)
/// let dataKey = try await kms.generateDataKey(kekId: "default", context: ["purpose": "notes"])
/// let again = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: ["purpose": "notes"])
/// assert(again == dataKey.plaintext)
/// ```
///
/// Implementations map their failures to ``DBKeyError`` codes: ``DBKeyError/Code-swift.struct/kmsUnavailable``
/// (retryable), ``DBKeyError/Code-swift.struct/kmsAccessDenied``,
/// ``DBKeyError/Code-swift.struct/kmsKeyNotFound``, ``DBKeyError/Code-swift.struct/kmsKeyDisabled``,
/// ``DBKeyError/Code-swift.struct/ciphertextInvalid``.
public protocol KeyManagementService: Sendable {
    /// The provider's id, recorded in the `.key` file's `kms` field and used to find the
    /// provider in a ``KmsRegistry``: `local`, `aws`, `vault`, `pkcs11`, `mock`, or your own.
    ///
    /// Choose it once: `.key` files written under it name it for as long as they live.
    var providerName: String { get }

    /// Creates a new 256-bit data key and returns it both in plaintext and wrapped under the KEK.
    ///
    /// - Parameters:
    ///   - kekId: The KEK as the user named it (an alias, `default`); the result carries the id
    ///     the service resolved it to.
    ///   - context: Bound to the wrapped key: unwrapping needs the same context.
    /// - Throws: ``DBKeyError`` with a KMS code.
    func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey

    /// Unwraps a data key.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/ciphertextInvalid`` when the wrapped key was
    ///   altered or the context differs; other KMS codes otherwise.
    func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer

    /// Wraps a plaintext data key under a KEK (used to move a key to another KEK).
    ///
    /// - Throws: ``DBKeyError`` with a KMS code.
    func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey

    /// Checks that the KEK is usable and measures how long the service takes to answer.
    ///
    /// - Throws: ``DBKeyError`` with a KMS code when the service or the key is not usable.
    func health(kekId: String) async throws -> KmsHealth

    /// The version of the KEK a wrapped key was made with, for services that version their
    /// keys (Vault Transit's `vault:vN:` as `N`, Cloud KMS's version number, Key Vault's 32-hex
    /// version id); `nil` otherwise.
    ///
    /// A version is opaque: compare it with ``KmsHealth/latestKekVersion`` for equality only
    /// (Key Vault's versions have no order).
    func kekVersion(of wrapped: WrappedDataKey) -> String?

    /// The version of the KEK a wrapped key was made with, as a number.
    @available(
        *, deprecated, renamed: "kekVersion(of:)", message: "Versions are opaque strings: Key Vault's are not numbers."
    )
    func keyVersion(of wrapped: WrappedDataKey) -> Int?

    /// Whether a `.key` file in the older seven-field form — which has no `kms` field — belongs
    /// to this provider, judged by its `kek_id` (AWS claims `arn:aws:kms:…` and `alias/…`).
    func claimsLegacyKekId(_ kekId: String) -> Bool

    /// Why `kekId` may not be a database's primary KEK, only a key slot beside one: `nil` (the
    /// default) when it may be.
    ///
    /// A KEK that can become unusable for reasons no operator controls — a TPM key bound to PCRs,
    /// which a firmware update changes — returns the reason; the manager then refuses to make
    /// it the primary.
    func primaryRefusal(kekId: String) -> String?
}

extension KeyManagementService {
    /// The deprecated ``keyVersion(of:)``'s answer as text, so that a provider written before
    /// versions became strings keeps showing them; `nil` when it does not implement it either.
    public func kekVersion(of wrapped: WrappedDataKey) -> String? {
        (NumberedKeyVersion(provider: self) as any NumberedKeyVersionReading).version(of: wrapped).map(String.init)
    }

    /// `nil`: the service does not tell key versions apart in its ciphertexts.
    @available(
        *, deprecated, renamed: "kekVersion(of:)", message: "Versions are opaque strings: Key Vault's are not numbers."
    )
    public func keyVersion(of wrapped: WrappedDataKey) -> Int? { nil }

    /// `false`: the provider claims no `.key` files of the older form.
    public func claimsLegacyKekId(_ kekId: String) -> Bool { false }

    public func primaryRefusal(kekId: String) -> String? { nil }
}

/// A service that can move a wrapped key to another of its KEKs (or to the newest version of the
/// same one) without the plaintext leaving the service: AWS KMS's `ReEncrypt`, Vault Transit's
/// `rewrap`. ``DatabaseKeyManager/rewrap(to:kekId:slot:wait:)`` uses it when source and target are the
/// same service.
public protocol ServerSideRewrapping: KeyManagementService {
    /// Wraps the key inside `wrapped` under `destinationKekId`, inside the service.
    ///
    /// - Returns: The new wrapped key, or `nil` when the service cannot do this move itself (the
    ///   caller then unwraps and wraps again).
    /// - Throws: ``DBKeyError`` with a KMS code.
    func serverSideRewrap(
        _ wrapped: WrappedDataKey,
        from sourceKekId: String,
        to destinationKekId: String,
        context: EncryptionContext
    ) async throws -> WrappedDataKey?
}

/// A data key in plaintext and wrapped, as returned by
/// ``KeyManagementService/generateDataKey(kekId:context:)``.
public struct DataKey: Sendable {
    /// The 32 key bytes.
    public let plaintext: SecureBuffer
    /// The key wrapped under the KEK, as stored in the `.key` file.
    public let wrapped: WrappedDataKey
    /// The KEK's id as the service resolved it (an alias becomes a key ARN, `default` becomes
    /// the local master key's fingerprint).
    public let kekId: String

    /// Creates a data key.
    public init(plaintext: SecureBuffer, wrapped: WrappedDataKey, kekId: String) {
        self.plaintext = plaintext
        self.wrapped = wrapped
        self.kekId = kekId
    }
}

/// A data key wrapped under a KEK, in the text form the `.key` file stores as `encrypted_dek`.
///
/// The text is the provider's own: base64 for the local provider and AWS KMS, `vault:v1:…` for
/// Vault Transit. It is not secret.
public struct WrappedDataKey: Sendable, Hashable, CustomStringConvertible {
    /// The wrapped key as stored in the `.key` file.
    public let encoded: String

    /// Wraps the stored text.
    public init(encoded: String) {
        self.encoded = encoded
    }

    /// The bytes of a base64-encoded wrapped key, or `nil` when the text is not base64.
    public var base64DecodedBytes: [UInt8]? {
        Base64.decode(encoded)
    }

    public var description: String { "WrappedDataKey(\(encoded.utf8.count) characters)" }
}

/// Reads the deprecated ``KeyManagementService/keyVersion(of:)`` without a deprecation warning
/// in the code that must still honour it: the call is made by a deprecated witness of this
/// protocol's requirement.
private protocol NumberedKeyVersionReading {
    func version(of wrapped: WrappedDataKey) -> Int?
}

private struct NumberedKeyVersion<Provider: KeyManagementService>: NumberedKeyVersionReading {
    let provider: Provider

    @available(*, deprecated)
    func version(of wrapped: WrappedDataKey) -> Int? { provider.keyVersion(of: wrapped) }
}

/// What ``KeyManagementService/health(kekId:)`` found.
public struct KmsHealth: Sendable, Hashable {
    /// The KEK's resolved id.
    public let kekId: String
    /// The key's state as the service reports it (`Enabled`, `available`, …).
    public let keyState: String
    /// How long the service took to answer.
    public let latency: Duration
    /// The KEK's newest version (the one new wraps use), for services that version their keys,
    /// in the form of ``KeyManagementService/kekVersion(of:)``; `nil` otherwise.
    public let latestKekVersion: String?

    /// Creates a health report.
    public init(kekId: String, keyState: String, latency: Duration, latestKekVersion: String? = nil) {
        self.kekId = kekId
        self.keyState = keyState
        self.latency = latency
        self.latestKekVersion = latestKekVersion
    }

    /// Whether a data key wrapped under `version` of this KEK is wrapped under an older version
    /// than the newest: whenever the two differ (versions are compared for equality only).
    public func isOutdated(_ version: String?) -> Bool {
        guard let version, let latestKekVersion else { return false }
        return version != latestKekVersion
    }
}
