import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// What a vault's `401` answer asks for, as the Azure SDKs read it:
/// `WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/TENANT",
/// resource="https://vault.azure.net"` (or `authorization_uri` and `scope`).
struct AuthenticationChallenge: Sendable, Equatable {
    /// The OAuth scope to ask for: the challenge's `scope`, else its `resource` + `/.default`.
    let scope: String
    /// The tenant the vault belongs to: the last path segment of `authorization`.
    let tenant: String?

    /// Parses the header and checks, as the SDKs do, that the resource it names is the vault's
    /// own domain (the vault's host ends with `.` and the resource's host, or is it), so that a
    /// host posing as a vault cannot obtain a token for another resource.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsAccessDenied`` for a header that is not a
    ///   Bearer challenge or names another resource.
    init(header: String, vaultHost: String) throws {
        guard header.lowercased().hasPrefix("bearer ") else {
            throw DBKeyError(
                .kmsAccessDenied, "The vault \(vaultHost) asked for \"\(header.prefix(40))\", not a Bearer token.")
        }
        var parameters: [String: String] = [:]
        let pattern = #/([A-Za-z_]+)\s*=\s*"([^"]*)"/#
        for match in header.dropFirst("bearer ".count).matches(of: pattern) {
            parameters[match.1.lowercased()] = String(match.2)
        }
        guard let resourceText = parameters["scope"] ?? parameters["resource"],
            let resource = URL(string: resourceText), let resourceHost = resource.host, !resourceHost.isEmpty
        else {
            throw DBKeyError(.kmsAccessDenied, "The vault \(vaultHost)'s challenge names no resource: \(header).")
        }
        let resourceAuthority = resourceHost + (resource.port.map { ":\($0)" } ?? "")
        let vault = vaultHost.lowercased()
        guard vault.hasSuffix("." + resourceAuthority.lowercased()) || vault == resourceAuthority.lowercased() else {
            throw DBKeyError(
                .kmsAccessDenied,
                "The vault \(vaultHost) asked for a token for \(resourceText), which is not its own domain: DBKey does not send tokens for another resource. Check the vault's host name."
            )
        }
        scope = parameters["scope"] ?? (resourceText.hasSuffix("/") ? resourceText : resourceText + "/") + ".default"
        let authorization = parameters["authorization"] ?? parameters["authorization_uri"]
        tenant = authorization.flatMap { URL(string: $0)?.pathComponents.last }.flatMap { $0 == "/" ? nil : $0 }
    }

    /// The resource of the scope, for the managed-identity endpoints, which take a resource.
    var resource: String { scope.hasSuffix("/.default") ? String(scope.dropLast("/.default".count)) : scope }
}
