import Foundation
import Logging
import Synchronization

/// How to make a provider that is not created up front: from the environment when a `.key` file
/// names it, or from a KEK URI that names it by its scheme.
///
/// `dbkey` knows its providers only through factories; an app registers instances, factories or
/// both.
///
/// ```swift
/// let factory = KmsProviderFactory(providerName: "local", uriScheme: "local") { environment, logger in
///     try LocalKms.fromEnvironment(environment, logger: logger)
/// }
/// let registry = KmsRegistry(factories: [factory])
/// ```
public struct KmsProviderFactory: Sendable {
    /// The id of the providers it makes (their ``KeyManagementService/providerName``).
    public let providerName: String
    /// The URI scheme that names its KEKs: `aws-kms` for `aws-kms://…`, `pkcs11` for `pkcs11:…`.
    public let uriScheme: String
    /// The URI forms it takes, for help and error messages (`aws-kms://alias/NAME`).
    public let uriForms: [String]
    /// Where its providers find their configuration and credentials, in a sentence, for
    /// `dbkey --help` (which lists the registered factories); empty when there is nothing to say.
    public let help: String
    private let claims: @Sendable (String) -> Bool
    private let make: @Sendable (ProviderEnvironment, Logger) throws -> any KeyManagementService
    private let target: (@Sendable (String, ProviderEnvironment, Logger) throws -> KekTarget?)?

    /// Creates a factory.
    ///
    /// - Parameters:
    ///   - providerName: The id of the providers it makes.
    ///   - uriScheme: The URI scheme of its KEKs.
    ///   - uriForms: The URI forms it takes, for messages; `SCHEME://KEY` by default.
    ///   - help: Where its providers find their configuration and credentials, for help.
    ///   - claimsLegacyKekId: Whether a seven-field `.key` file with this `kek_id` is this
    ///     provider's; by default none is.
    ///   - target: Resolves the key part of a URI to a provider and KEK id, for URIs that name a
    ///     configuration as well as a key (`local:///PATH` names a master key file); when it is
    ///     absent or returns `nil`, the registry's provider and the key part as the KEK id.
    ///   - makeProvider: Makes the provider from the environment.
    public init(
        providerName: String,
        uriScheme: String,
        uriForms: [String]? = nil,
        help: String = "",
        claimsLegacyKekId: @escaping @Sendable (String) -> Bool = { _ in false },
        target: (
            @Sendable (_ keyPart: String, _ environment: ProviderEnvironment, _ logger: Logger) throws -> KekTarget?
        )? = nil,
        makeProvider:
            @escaping @Sendable (_ environment: ProviderEnvironment, _ logger: Logger) throws ->
            any KeyManagementService
    ) {
        self.providerName = providerName
        self.uriScheme = uriScheme
        self.uriForms = uriForms ?? ["\(uriScheme)://KEY"]
        self.help = help
        self.claims = claimsLegacyKekId
        self.make = makeProvider
        self.target = target
    }

    func claimsLegacyKekId(_ kekId: String) -> Bool { claims(kekId) }

    func makeProvider(environment: ProviderEnvironment, logger: Logger) throws -> any KeyManagementService {
        try make(environment, logger)
    }

    func target(forKeyPart keyPart: String, environment: ProviderEnvironment, logger: Logger) throws -> KekTarget? {
        try target?(keyPart, environment, logger)
    }
}

/// A provider that configures itself from environment variables, as every provider of the
/// package does: ``KmsProviderFactory/init(_:providerName:uriScheme:uriForms:help:claimsLegacyKekId:)``
/// makes its factory.
public protocol EnvironmentConfigurable: KeyManagementService {
    /// The provider as the variables in `environment` configure it.
    ///
    /// - Throws: ``DBKeyError`` naming the variable that is missing or invalid.
    static func fromEnvironment(_ environment: ProviderEnvironment, logger: Logger) throws -> Self
}

extension EnvironmentConfigurable {
    /// The provider as the variables of a dictionary configure it.
    ///
    /// - Throws: ``DBKeyError`` naming the variable that is missing or invalid.
    public static func fromEnvironment(_ variables: [String: String], logger: Logger) throws -> Self {
        try fromEnvironment(ProviderEnvironment(variables), logger: logger)
    }
}

extension KmsProviderFactory {
    /// A factory that makes `provider` from the environment
    /// (``EnvironmentConfigurable/fromEnvironment(_:logger:)``).
    ///
    /// - Parameters:
    ///   - provider: The provider type.
    ///   - providerName: The id of the providers it makes.
    ///   - uriScheme: The URI scheme of its KEKs.
    ///   - uriForms: The URI forms it takes, for messages; `SCHEME://KEY` by default.
    ///   - help: Where its providers find their configuration and credentials, for help.
    ///   - claimsLegacyKekId: Whether a seven-field `.key` file with this `kek_id` is this
    ///     provider's; by default none is.
    public init<Provider: EnvironmentConfigurable>(
        _ provider: Provider.Type,
        providerName: String,
        uriScheme: String,
        uriForms: [String]? = nil,
        help: String = "",
        claimsLegacyKekId: @escaping @Sendable (String) -> Bool = { _ in false }
    ) {
        self.init(
            providerName: providerName, uriScheme: uriScheme, uriForms: uriForms, help: help,
            claimsLegacyKekId: claimsLegacyKekId
        ) { environment, logger in
            try Provider.fromEnvironment(environment, logger: logger)
        }
    }
}

/// A KEK and the provider that holds it: what a KEK URI resolves to.
public struct KekTarget: Sendable {
    /// The provider.
    public let provider: any KeyManagementService
    /// The KEK's id in the provider's terms.
    public let kekId: String

    /// Creates a target.
    public init(provider: any KeyManagementService, kekId: String) {
        self.provider = provider
        self.kekId = kekId
    }
}

/// The providers a manager may use, by id: every `.key` file whose provider is registered opens,
/// whichever provider wrote it, and a key can move between them.
///
/// Providers are registered as instances, or as factories that make them on first use (so that
/// a provider whose configuration is missing fails only when a database needs it).
///
/// ```swift
/// let registry = KmsRegistry(providers: [try LocalKms.fromEnvironment(logger: logger), MyKms()])
/// let manager = DatabaseKeyManager(
///     databasePath: "app.db",
///     providers: registry,
///     configuration: .init(kekProvider: "local"),
///     logger: logger
/// )
/// ```
public final class KmsRegistry: Sendable {
    private let instances: [String: any KeyManagementService]
    private let factories: [String: KmsProviderFactory]
    private let environment: ProviderEnvironment
    private let logger: Logger
    private let made = Mutex<[String: any KeyManagementService]>([:])
    private let limiter: KmsRateLimiter?

    /// Creates a registry.
    ///
    /// - Parameters:
    ///   - providers: Providers made up front. An instance wins over a factory of the same id.
    ///   - factories: Providers made on first use.
    ///   - environment: What factories read their configuration from.
    ///   - logger: Given to the providers factories make.
    public init(
        providers: [any KeyManagementService] = [],
        factories: [KmsProviderFactory] = [],
        environment: ProviderEnvironment = .process,
        logger: Logger = Logger(label: "dbkey.kms", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.instances = Dictionary(providers.map { ($0.providerName, $0) }, uniquingKeysWith: { first, _ in first })
        self.factories = Dictionary(factories.map { ($0.providerName, $0) }, uniquingKeysWith: { first, _ in first })
        self.environment = environment
        self.logger = logger
        self.limiter = nil
    }

    private init(copying registry: KmsRegistry, limiter: KmsRateLimiter?) {
        self.instances = registry.instances
        self.factories = registry.factories
        self.environment = registry.environment
        self.logger = registry.logger
        self.limiter = limiter
    }

    /// This registry with every request of every provider it hands out waiting its turn at
    /// `limiter` (a provider's own rewrap inside the service, such as AWS `ReEncrypt`, is then
    /// not used: the key is unwrapped and wrapped again, two limited requests).
    public func rateLimited(_ limiter: KmsRateLimiter) -> KmsRegistry {
        KmsRegistry(copying: self, limiter: limiter)
    }

    private func limited(_ provider: any KeyManagementService) -> any KeyManagementService {
        limiter.map { RateLimitedKms(base: provider, limiter: $0) } ?? provider
    }

    /// A registry of one provider.
    public convenience init(_ provider: any KeyManagementService) {
        self.init(providers: [provider])
    }

    /// This registry with `provider` added, replacing one of the same id.
    public func adding(_ provider: any KeyManagementService) -> KmsRegistry {
        let added = KmsRegistry(
            providers: [provider] + instances.values.filter { $0.providerName != provider.providerName },
            factories: Array(factories.values),
            environment: environment,
            logger: logger
        )
        return limiter.map { added.rateLimited($0) } ?? added
    }

    /// The ids of the registered providers, sorted.
    public var providerNames: [String] {
        Set(instances.keys).union(factories.keys).sorted()
    }

    /// The provider registered under `name`, made by its factory on first use.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` when no provider of that id
    ///   is registered; the factory's configuration errors.
    public func provider(named name: String) throws -> any KeyManagementService {
        limited(try unlimitedProvider(named: name))
    }

    private func unlimitedProvider(named name: String) throws -> any KeyManagementService {
        if let instance = instances[name] { return instance }
        if let existing = made.withLock({ $0[name] }) { return existing }
        guard let factory = factories[name] else {
            throw DBKeyError(
                .unsupportedFormat,
                "No KMS provider \"\(name)\" is registered (registered: \(providerNames.joined(separator: ", "))). Register it with the manager, or use a build of dbkey that includes it."
            )
        }
        let provider = try factory.makeProvider(environment: environment, logger: logger)
        return made.withLock { made in
            if let raced = made[name] { return raced }
            made[name] = provider
            return provider
        }
    }

    /// The id of the provider that claims a `kek_id` of the older seven-field `.key` form, or
    /// `nil` when none does.
    public func providerName(claimingLegacyKekId kekId: String) -> String? {
        if let instance = instances.values.sorted(by: { $0.providerName < $1.providerName })
            .first(where: { $0.claimsLegacyKekId(kekId) })
        {
            return instance.providerName
        }
        return factories.values.sorted(by: { $0.providerName < $1.providerName })
            .first(where: { $0.claimsLegacyKekId(kekId) })?.providerName
    }

    /// The provider and KEK id a KEK URI names.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` when no registered
    ///   provider has the URI's scheme; the provider's configuration errors.
    public func target(for uri: KekURI) throws -> KekTarget {
        if let factory = factories.values.first(where: { $0.uriScheme == uri.scheme }) {
            if let target = try factory.target(forKeyPart: uri.keyId, environment: environment, logger: logger) {
                return KekTarget(provider: limited(target.provider), kekId: target.kekId)
            }
            return KekTarget(provider: try provider(named: factory.providerName), kekId: uri.keyId)
        }
        if let instance = instances[uri.scheme] {
            return KekTarget(provider: limited(instance), kekId: uri.keyId)
        }
        throw DBKeyError(
            .invalidConfiguration,
            "\"\(uri)\" is not a KEK URI of a registered provider (none takes \(uri.scheme): URIs). Use one of: \(uriForms.joined(separator: ", "))."
        )
    }

    /// The URI forms the registry accepts, for messages and help.
    public var uriForms: [String] {
        let fromFactories = factories.values.sorted { $0.providerName < $1.providerName }.flatMap(\.uriForms)
        let fromInstances = instances.keys.filter { factories[$0] == nil }.sorted().map { "\($0)://KEY" }
        return fromFactories + fromInstances
    }

    /// Parses a KEK URI and resolves it, naming the accepted forms when the text is not one.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for text that is not a
    ///   URI of a registered provider; the provider's configuration errors.
    public func target(forURI text: String) throws -> KekTarget {
        let uri: KekURI
        do {
            uri = try KekURI(text)
        } catch let error as DBKeyError {
            throw DBKeyError(
                error.code, "\(error.message) Use one of: \(uriForms.joined(separator: ", ")).")
        }
        return try target(for: uri)
    }

    /// The provider id of a `.key` file: its `kms` field, or for the older form the provider
    /// that claims its `kek_id`.
    func providerName(of keyFile: KeyFile, source: String) throws -> String {
        if let kms = keyFile.kms { return kms }
        guard let claimed = providerName(claimingLegacyKekId: keyFile.kekId) else {
            throw DBKeyError(
                .keyFileCorrupt,
                "The key file \(source) has no \"kms\" field and no registered provider claims its kek_id \(keyFile.kekId). Add \"kms\": \"<provider>\" (registered: \(providerNames.joined(separator: ", ")))).",
                path: source,
                kekId: keyFile.kekId
            )
        }
        return claimed
    }
}
