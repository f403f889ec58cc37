import Foundation

/// Where providers read their configuration: variables by name, as the clouds' own SDKs name
/// them (`AWS_REGION`, `VAULT_ADDR`, `DBKEY_MASTER_KEY_FILE`).
///
/// By default the process's environment; a dictionary for tests and tools; or an app's own
/// configuration through a lookup — the `SQLCipherKeyManagerConfiguration` product reads the
/// same names from swift-configuration's `ConfigReader` (`AWS_REGION` as the key
/// `aws.region`), so that an app configures its providers from its own sources.
///
/// ```swift
/// let environment: ProviderEnvironment = [LocalKms.masterKeyFileVariable: "/etc/app/master.key"]
/// let kms = try LocalKms.fromEnvironment(environment, logger: logger)
/// ```
public struct ProviderEnvironment: Sendable, ExpressibleByDictionaryLiteral {
    private let lookup: @Sendable (String) -> String?

    /// An environment that answers each variable with `lookup`.
    public init(lookup: @escaping @Sendable (_ variable: String) -> String?) {
        self.lookup = lookup
    }

    /// The variables of a dictionary.
    public init(_ variables: [String: String]) {
        self.init { variables[$0] }
    }

    public init(dictionaryLiteral elements: (String, String)...) {
        self.init(Dictionary(elements) { _, last in last })
    }

    /// The process's environment, as it is now.
    public static var process: ProviderEnvironment {
        ProviderEnvironment(ProcessInfo.processInfo.environment)
    }

    /// The variable's value; `nil` when it is not set.
    public subscript(_ variable: String) -> String? {
        lookup(variable)
    }
}
