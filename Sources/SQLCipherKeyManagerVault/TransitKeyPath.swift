import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// A Transit key named as DBKey names it: `MOUNT/keys/NAME`, the part of
/// `vault://transit/keys/NAME` after the scheme. The mount may have several segments
/// (`apps/transit/keys/db`).
struct TransitKeyPath: Sendable, Hashable, CustomStringConvertible {
    /// The secrets engine's mount path, without slashes at either end.
    let mount: String
    /// The key's name.
    let name: String

    /// Parses `MOUNT/keys/NAME`.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for any other form, or
    ///   for characters Vault paths do not use (so that nothing needs escaping in a URL).
    init(_ text: String) throws {
        guard let separator = text.range(of: "/keys/", options: .backwards) else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(text)\" is not a Transit key: use MOUNT/keys/NAME, as in vault://transit/keys/app-db.")
        }
        let mount = String(text[..<separator.lowerBound])
        let name = String(text[separator.upperBound...])
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        let segments = mount.split(separator: "/", omittingEmptySubsequences: false)
        guard !name.isEmpty, name.allSatisfy(allowed.contains),
            !segments.isEmpty, segments.allSatisfy({ !$0.isEmpty && $0.allSatisfy(allowed.contains) })
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(text)\" is not a Transit key: the mount and the name may hold letters, digits, '-', '_' and '.', the mount also '/'."
            )
        }
        self.mount = mount
        self.name = name
    }

    var description: String { "\(mount)/keys/\(name)" }

    /// The API path of an operation on this key: `/v1/MOUNT/OPERATION/NAME`.
    func apiPath(_ operation: String) -> String { "/v1/\(mount)/\(operation)/\(name)" }
}
