import SQLCipherKeyManager

/// A Cloud KMS key named as Cloud KMS names it:
/// `projects/P/locations/L/keyRings/R/cryptoKeys/K` (the part of `gcp-kms://…` after the
/// scheme).
struct CloudKmsKeyName: Sendable, Hashable, CustomStringConvertible {
    let description: String

    /// Parses the resource name.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for any other form, or
    ///   for characters Cloud KMS does not allow in its ids (so that nothing needs escaping in
    ///   a URL). A project id may be domain-scoped (`example.com:project`).
    init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        let labels = ["projects", "locations", "keyRings", "cryptoKeys"]
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
        guard parts.count == 8,
            (0..<4).allSatisfy({ parts[$0 * 2] == labels[$0] }),
            (0..<4).allSatisfy({ index in
                let id = parts[index * 2 + 1]
                return !id.isEmpty && id.count <= 63
                    && id.allSatisfy { allowed.contains($0) || (index == 0 && (".:").contains($0)) }
            })
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(text)\" is not a Cloud KMS key: use projects/P/locations/L/keyRings/R/cryptoKeys/K, as in gcp-kms://projects/acme/locations/global/keyRings/apps/cryptoKeys/notes-db."
            )
        }
        description = text
    }

    /// The number of a version name of this key (`…/cryptoKeyVersions/N`), or `nil`.
    func versionNumber(of versionName: String) -> Int? {
        let prefix = description + "/cryptoKeyVersions/"
        guard versionName.hasPrefix(prefix), let number = Int(versionName.dropFirst(prefix.count)), number > 0
        else { return nil }
        return number
    }
}
