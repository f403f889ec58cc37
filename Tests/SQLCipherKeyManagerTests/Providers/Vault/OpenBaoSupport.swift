import Foundation
import Testing

@testable import SQLCipherKeyManager
@testable import KmsHTTP
@testable import SQLCipherKeyManagerVault

/// The OpenBao dev server `Scripts/test` starts (through `Scripts/openbao`) and describes in
/// `DBKEY_TEST_VAULT_*` variables. A test that needs it fails when it is missing.
enum OpenBao {
    static let variables = ProcessInfo.processInfo.environment

    static func value(_ name: String) throws -> String {
        try scriptVariable("DBKEY_TEST_VAULT_\(name)", describing: "OpenBao server")
    }

    static func address() throws -> URL { URL(string: try value("ADDR"))! }
    static func rootToken() throws -> String { try value("TOKEN") }

    /// A provider talking to the server with `token` (default: the root token), through
    /// `transport` when given.
    static func provider(
        token: String? = nil,
        retry: RetryPolicy = .init(attempts: 2, timeout: .seconds(5)),
        transport: (any KmsTransport)? = nil
    ) throws -> VaultTransit {
        VaultTransit(
            address: try address(),
            token: try Passphrase.fromText(token ?? rootToken(), kind: "Vault token"),
            namespace: nil,
            retry: retry,
            transport: transport ?? URLSessionKmsTransport(),
            logger: silentLogger
        )
    }

    /// The environment a `dbkey` process needs to reach the server as Vault's CLI would.
    static func processEnvironment() throws -> [String: String] {
        ["VAULT_ADDR": try value("ADDR"), "VAULT_TOKEN": try rootToken()]
    }

    /// An API call with the root token, as it is answered.
    static func send(
        _ method: String,
        _ path: String,
        _ body: [String: Any]? = nil,
        namespace: String? = nil
    ) async throws -> (status: Int, object: [String: Any]) {
        var headers = [(name: "X-Vault-Token", value: try rootToken())]
        if let namespace { headers.append((name: "X-Vault-Namespace", value: namespace)) }
        let response = try await URLSessionKmsTransport().send(
            KmsHTTPRequest(
                url: try address().appendingPathComponent("v1/" + path),
                method: method,
                headers: headers,
                body: try body.map { try JSONSerialization.data(withJSONObject: $0) } ?? Data()
            ),
            timeout: .seconds(10)
        )
        return (response.status, (try? JSONSerialization.jsonObject(with: response.body) as? [String: Any]) ?? [:])
    }

    /// An API call with the root token that must succeed; the answer's `data` (or `auth`).
    @discardableResult
    static func admin(
        _ method: String,
        _ path: String,
        _ body: [String: Any]? = nil,
        namespace: String? = nil
    ) async throws -> [String: Any] {
        let (status, object) = try await send(method, path, body, namespace: namespace)
        #expect([200, 204].contains(status), "\(method) \(path): \(object)")
        return object["data"] as? [String: Any] ?? object["auth"] as? [String: Any] ?? [:]
    }

    /// Creates a new Transit key of the test's own and returns its DBKey name, `MOUNT/keys/NAME`.
    static func createKey(derived: Bool = false, mount: String = "transit") async throws -> String {
        let name = "test-" + UUID().uuidString.lowercased()
        try await admin("POST", "\(mount)/keys/\(name)", derived ? ["derived": true] : [:])
        return "\(mount)/keys/\(name)"
    }

    static func rotate(_ kekId: String) async throws {
        try await admin("POST", kekId + "/rotate")
    }

    static func setMinimumDecryptionVersion(_ kekId: String, _ version: Int) async throws {
        try await admin("POST", kekId + "/config", ["min_decryption_version": version])
    }

    /// A token whose only policy is `policy` (HCL).
    static func token(policy: String) async throws -> String {
        let name = "test-" + UUID().uuidString.lowercased()
        try await admin("PUT", "sys/policies/acl/\(name)", ["policy": policy])
        let auth = try await admin("POST", "auth/token/create", ["policies": [name], "no_default_policy": true])
        return try #require(auth["client_token"] as? String)
    }
}
