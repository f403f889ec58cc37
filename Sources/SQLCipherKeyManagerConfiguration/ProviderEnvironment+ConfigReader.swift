public import Configuration
public import SQLCipherKeyManager

extension ProviderEnvironment {
    /// The providers' variables read from an app's configuration.
    ///
    /// Each variable is read at the key of its name in lowercase, split at its underscores:
    /// `AWS_REGION` at `aws.region`, `DBKEY_MASTER_KEY_FILE` at `dbkey.master.key.file`.
    /// swift-configuration's `EnvironmentVariablesProvider` maps those keys back to the same
    /// variables, so a reader over the environment answers as the environment does, and a JSON
    /// or in-memory provider of the app sets the same keys. A reader scoped to a prefix
    /// (`config.scoped(to: "dbkey")`) reads `dbkey.aws.region`.
    ///
    /// Variables that hold secrets are read as secrets, which access reporters redact: a name
    /// with `SECRET`, `TOKEN`, `PASS`, `PIN` or `HEADER` in it, or one that ends in `KEY`
    /// (``isSecret(_:)``).
    ///
    /// ```swift
    /// let config = ConfigReader(providers: [
    ///     InMemoryProvider(values: ["dbkey.master.key.file": "/etc/app/master.key"]),
    ///     EnvironmentVariablesProvider(),
    /// ])
    /// let registry = KmsRegistry(factories: [LocalKms.factory], environment: ProviderEnvironment(config))
    /// ```
    public init(_ config: ConfigReader) {
        self.init { variable in
            config.string(forKey: Self.configKey(forVariable: variable), isSecret: Self.isSecret(variable))
        }
    }

    /// The configuration key a variable is read at: `AWS_REGION` at `aws.region`.
    public static func configKey(forVariable variable: String) -> ConfigKey {
        ConfigKey(variable.lowercased().split(separator: "_", omittingEmptySubsequences: false).map(String.init))
    }

    /// Whether a variable holds a secret, by its name: `SECRET`, `TOKEN`, `PASS`, `PIN` or
    /// `HEADER` in it (`AWS_SECRET_ACCESS_KEY`, `VAULT_TOKEN`, `DBKEY_PKCS11_PIN`, Azure's
    /// `IDENTITY_HEADER`), or `KEY` at its end (`DBKEY_MASTER_KEY`). A path to a secret
    /// (`AWS_WEB_IDENTITY_TOKEN_FILE`) counts too: redacting it costs nothing.
    public static func isSecret(_ variable: String) -> Bool {
        let name = variable.uppercased()
        return ["SECRET", "TOKEN", "PASS", "PIN", "HEADER"].contains { name.contains($0) } || name.hasSuffix("KEY")
    }
}
