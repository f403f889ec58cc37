import Foundation
import SQLCipherKeyManager

/// Checks on the URLs a provider sends credentials or keys to.
package enum EndpointURL {
    /// Parses `text` as an `https://` URL, or an `http://` one to a loopback address only
    /// (`127.0.0.0/8`, `::1`, `localhost`): a test server or a local proxy, never a network.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` naming `what`.
    package static func requiringTLS(_ text: String, what: String) throws -> URL {
        guard let url = URL(string: text), let scheme = url.scheme?.lowercased(), let host = url.host,
            !host.isEmpty, url.user == nil
        else {
            throw DBKeyError(.invalidConfiguration, "The \(what) \"\(text)\" is not an http(s) URL.")
        }
        if scheme == "https" || (scheme == "http" && isLoopback(host)) { return url }
        throw DBKeyError(
            .invalidConfiguration,
            "The \(what) \"\(text)\" must use https:// (plain http:// only to a loopback address, for tests).")
    }

    /// Parses `text` as the URL of a metadata or identity service: https, or http to a loopback
    /// or link-local (`169.254.0.0/16`) address, where clouds serve them.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` naming `what`.
    package static func metadataService(_ text: String, what: String) throws -> URL {
        if let url = URL(string: text), url.scheme == "http", let host = url.host,
            host.hasPrefix("169.254.") || isLoopback(host)
        {
            return url
        }
        return try requiringTLS(text, what: what)
    }

    /// Whether `host` names this machine: `localhost`, `::1` or an address in `127.0.0.0/8`.
    package static func isLoopback(_ host: String) -> Bool {
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]")).lowercased()
        if bare == "localhost" || bare == "::1" { return true }
        let octets = bare.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }
}
