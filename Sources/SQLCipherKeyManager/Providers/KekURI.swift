import Foundation
import Logging

/// A key-encryption key named by URI, the one form used on the command line and in
/// configuration: provider and key in one string.
///
/// | URI | provider | key |
/// |---|---|---|
/// | `local://default` | the configured local master key | `default` |
/// | `local:///PATH` | the local master key in the file at `/PATH` (for rewrapping to a new one) | `default` |
/// | `aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID`, `aws-kms://alias/NAME` | AWS KMS | the ARN or alias |
/// | `vault://transit/keys/NAME` | Vault / OpenBao Transit | `NAME` under the mount |
/// | `pkcs11:token=LABEL;object=LABEL` | a PKCS#11 token | the object label |
/// | `mock://NAME` | ``MockKms``-style providers in tests | `NAME` |
///
/// ```swift
/// let kek = try KekURI("local://default")
/// let kms = try kek.makeProvider(logger: logger)
/// ```
public struct KekURI: Sendable, Hashable, CustomStringConvertible {
    /// The provider's name as recorded in `.key` files: `local`, `aws`, `vault`, `pkcs11`, `mock`.
    public let provider: String
    /// The key, in the provider's terms.
    public let keyId: String
    /// The URI as given.
    public let description: String

    private static let schemes: [(prefix: String, provider: String)] = [
        ("local://", "local"),
        ("aws-kms://", "aws"),
        ("vault://", "vault"),
        ("pkcs11:", "pkcs11"),
        ("mock://", "mock"),
    ]

    /// Parses a KEK URI.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for an unknown scheme or
    ///   an empty key.
    public init(_ text: String) throws {
        guard let scheme = KekURI.schemes.first(where: { text.hasPrefix($0.prefix) }) else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(text)\" is not a KEK URI. Use local://default, aws-kms://…, vault://transit/keys/NAME, pkcs11:token=…;object=…, or mock://NAME."
            )
        }
        let keyId = String(text.dropFirst(scheme.prefix.count))
        guard !keyId.isEmpty else {
            throw DBKeyError(.invalidConfiguration, "The KEK URI \"\(text)\" names no key.")
        }
        self.provider = scheme.provider
        self.keyId = keyId
        self.description = text
    }

    /// Creates the provider this URI names, configured from the environment.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a provider this build
    ///   does not include, or the provider's own configuration errors.
    public func makeProvider(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger
    ) throws -> any KeyManagementService {
        if provider == "local", keyId.hasPrefix("/") {
            return try LocalKms.fromEnvironment([LocalKms.masterKeyFileVariable: keyId], logger: logger)
        }
        return try KekURI.makeProvider(named: provider, environment: environment, logger: logger)
    }

    /// The KEK id to give the provider this URI makes: the key part, except that a local
    /// master key named by its file is the provider's `default`.
    public var providerKekId: String {
        provider == "local" && keyId.hasPrefix("/") ? LocalKms.defaultKekName : keyId
    }

    /// Creates the provider a `.key` file names in its `kms` field, configured from the
    /// environment.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a provider this build
    ///   does not include.
    public static func makeProvider(
        named provider: String,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger
    ) throws -> any KeyManagementService {
        switch provider {
        case "local":
            return try LocalKms.fromEnvironment(environment, logger: logger)
        case "aws":
            return try AwsKms.fromEnvironment(environment, logger: logger)
        case "vault":
            return try VaultTransit.fromEnvironment(environment, logger: logger)
        case "pkcs11":
            return try Pkcs11Kms.fromEnvironment(environment, logger: logger)
        default:
            throw DBKeyError(
                .invalidConfiguration,
                "The \(provider) KMS provider is not available in this build of DBKey (available: local, aws, vault, pkcs11)."
            )
        }
    }
}
