/// A key-encryption key named by URI, the one form used on the command line and in
/// configuration: provider and key in one string, `SCHEME://KEY` (or `SCHEME:KEY` for schemes
/// such as RFC 7512's `pkcs11:`).
///
/// Which schemes exist is up to the providers registered in a ``KmsRegistry``; the package's
/// own are:
///
/// | URI | provider | key |
/// |---|---|---|
/// | `local://default` | the configured local master key | `default` |
/// | `local:///PATH` | the local master key in the file at `/PATH` (for rewrapping to a new one) | `default` |
/// | `aws-kms://arn:aws:kms:REGION:ACCOUNT:key/ID`, `aws-kms://alias/NAME` | AWS KMS | the ARN or alias |
/// | `vault://transit/keys/NAME` | Vault / OpenBao Transit | `NAME` under the mount |
/// | `pkcs11:token=LABEL;object=LABEL` | a PKCS#11 token | the object label |
///
/// ```swift
/// let kek = try KekURI("local://default")
/// let target = try KmsRegistry(factories: [LocalKms.factory]).target(for: kek)
/// ```
public struct KekURI: Sendable, Hashable, CustomStringConvertible {
    /// The scheme, which names the provider: `local`, `aws-kms`, `vault`, `pkcs11`, …
    public let scheme: String
    /// The key, in the provider's terms: what follows `SCHEME://` (or `SCHEME:`).
    public let keyId: String
    /// The URI as given.
    public let description: String

    /// Parses a KEK URI.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for text that is not
    ///   `SCHEME:KEY` with a lowercase scheme, or that names no key.
    public init(_ text: String) throws {
        guard let colon = text.firstIndex(of: ":"),
            case let scheme = String(text[..<colon]),
            let first = scheme.unicodeScalars.first, ("a"..."z").contains(first),
            scheme.unicodeScalars.allSatisfy({
                ("a"..."z").contains($0) || ("0"..."9").contains($0) || "+-.".unicodeScalars.contains($0)
            })
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(text)\" is not a KEK URI: write SCHEME://KEY, for example local://default or aws-kms://alias/NAME."
            )
        }
        var rest = text[text.index(after: colon)...]
        if rest.hasPrefix("//") { rest = rest.dropFirst(2) }
        guard !rest.isEmpty else {
            throw DBKeyError(.invalidConfiguration, "The KEK URI \"\(text)\" names no key.")
        }
        self.scheme = scheme
        self.keyId = String(rest)
        self.description = text
    }
}
