import Foundation
import SQLCipherKeyManager

/// A KEK on a PKCS#11 token, named by the path of an RFC 7512 URI: `token=LABEL;object=LABEL`,
/// the part of `pkcs11:token=LABEL;object=LABEL` after the scheme.
///
/// Values are percent-decoded. `type` may be given and must be `secret-key`; `serial` narrows
/// the token. A PIN in the URI (`pin-value`) is refused: URIs end up on command lines.
struct Pkcs11KeyName: Sendable, Hashable, CustomStringConvertible {
    /// The token's label (`CKA_LABEL` of the token, `token=`).
    let tokenLabel: String
    /// The key's label (`CKA_LABEL`, `object=`).
    let objectLabel: String
    /// The token's serial number, when the URI names one.
    let serial: String?

    /// Parses `token=…;object=…[;type=secret-key][;serial=…]`.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a missing token or
    ///   object, an unknown or repeated attribute, a PIN, or bad percent-encoding.
    init(_ text: String) throws {
        var attributes: [String: String] = [:]
        let path = text.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]
        for pair in path.split(separator: ";") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let value = String(parts[1]).removingPercentEncoding, !value.isEmpty else {
                throw DBKeyError(
                    .invalidConfiguration, "\"pkcs11:\(text)\" is not a PKCS#11 URI: \"\(pair)\" is not NAME=VALUE.")
            }
            let name = String(parts[0])
            if name.hasPrefix("pin-") {
                throw DBKeyError(
                    .invalidConfiguration,
                    "A PKCS#11 URI must not carry the PIN: set DBKEY_PKCS11_PIN_FILE (or DBKEY_PKCS11_PIN) instead.")
            }
            guard ["token", "object", "type", "serial"].contains(name), attributes[name] == nil else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\"pkcs11:\(text)\": the attribute \"\(name)\" is unknown or repeated (use token, object, type, serial)."
                )
            }
            attributes[name] = value
        }
        guard let token = attributes["token"], let object = attributes["object"] else {
            throw DBKeyError(
                .invalidConfiguration, "\"pkcs11:\(text)\" must name a token and an object: pkcs11:token=…;object=….")
        }
        if let type = attributes["type"], type != "secret-key" {
            throw DBKeyError(
                .invalidConfiguration, "\"pkcs11:\(text)\" names a \(type); the KEK must be a secret-key (AES-256).")
        }
        tokenLabel = token
        objectLabel = object
        serial = attributes["serial"]
    }

    /// The canonical form, recorded as the `.key` file's `kek_id`.
    var description: String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~:[]@!$'()*+,"))
        func encoded(_ value: String) -> String { value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value }
        var text = "token=\(encoded(tokenLabel));object=\(encoded(objectLabel))"
        if let serial { text += ";serial=\(encoded(serial))" }
        return text
    }
}
