import Foundation
import SQLCipherKeyManager

/// A Key Vault or Managed HSM key named as DBKey names it: `HOST/keys/NAME[/VERSION]`, the part
/// of `azure-kv://…` after the scheme (`myvault.vault.azure.net/keys/app-db`,
/// `mypool.managedhsm.azure.net/keys/app-db/0123…`).
struct KeyVaultKeyName: Sendable, Hashable, CustomStringConvertible {
    /// The vault's host, with a port if one is named.
    let host: String
    let name: String
    /// The version pinned in the name (32 hexadecimal digits), if any.
    let version: String?

    /// Parses the name.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for any other form, or
    ///   for characters Key Vault does not allow (so that nothing needs escaping in a URL).
    init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let hostCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.:")
        let nameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
        guard (3...4).contains(parts.count), parts[1] == "keys",
            !parts[0].isEmpty, parts[0].allSatisfy(hostCharacters.contains),
            (1...127).contains(parts[2].count), parts[2].allSatisfy(nameCharacters.contains),
            parts.count == 3 || KeyVaultKeyName.isVersion(parts[3])
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(text)\" is not a Key Vault key: use HOST/keys/NAME or HOST/keys/NAME/VERSION, as in azure-kv://myvault.vault.azure.net/keys/app-db."
            )
        }
        host = parts[0]
        name = parts[2]
        version = parts.count == 4 ? parts[3] : nil
    }

    static func isVersion(_ text: some StringProtocol) -> Bool {
        text.count == 32 && text.allSatisfy(\.isHexDigit)
    }

    var description: String { "\(host)/keys/\(name)" + (version.map { "/\($0)" } ?? "") }

    /// The vault's base URL: always https.
    var vault: URL { URL(string: "https://\(host)")! }

    /// The URL of an operation (`wrapkey`, `unwrapkey`, or none to read the key) on `version`
    /// (else the pinned one, else the newest), with the pinned API version.
    func url(_ operation: String?, version: String?) -> URL {
        var path = "/keys/\(name)"
        if let version = version ?? self.version { path += "/\(version)" }
        if let operation { path += "/\(operation)" }
        return URL(string: "https://\(host)\(path)?api-version=\(AzureKeyVault.apiVersion)")!
    }
}
