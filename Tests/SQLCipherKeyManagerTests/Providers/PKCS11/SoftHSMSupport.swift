import Foundation
import Testing

@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerPKCS11

/// The SoftHSM2 token `Scripts/test` makes (through `Scripts/softhsm`) and describes in
/// `DBKEY_TEST_PKCS11_*` variables. A test that needs it fails when it is missing.
enum SoftHSM {
    static let variables = ProcessInfo.processInfo.environment

    static func value(_ name: String) throws -> String {
        try scriptVariable("DBKEY_TEST_PKCS11_\(name)", describing: "SoftHSM2 token")
    }

    static func module() throws -> String { try value("MODULE") }
    static func token() throws -> String { try value("TOKEN") }

    /// The KEK the script made: `token=…;object=…`.
    static func kekId(object: String? = nil) throws -> String {
        "token=\(try token());object=\(try object ?? value("OBJECT"))"
    }

    static func pin() throws -> String {
        try String(contentsOfFile: value("PIN_FILE"), encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func provider() throws -> Pkcs11Kms {
        try Pkcs11Kms(modulePath: module(), pin: Passphrase.fromText(pin()), logger: silentLogger)
    }

    /// The environment a `dbkey` process needs to use the token.
    static func processEnvironment() throws -> [String: String] {
        [
            Pkcs11Kms.moduleVariable: try module(),
            Pkcs11Kms.pinFileVariable: try value("PIN_FILE"),
            "SOFTHSM2_CONF": variables["SOFTHSM2_CONF"] ?? "",
        ]
    }

    /// Runs OpenSC's pkcs11-tool on the test token (the PIN on its command line: a test PIN).
    @discardableResult
    static func tool(_ arguments: [String]) async throws -> ProcessResult {
        let tool = try requireTool("pkcs11-tool", installedBy: "the Debian package opensc")
        let result = try await run(
            tool, ["--module", try module(), "--token-label", try token(), "--login", "--pin", try pin()] + arguments,
            environment: ["SOFTHSM2_CONF": variables["SOFTHSM2_CONF"] ?? "", "PATH": variables["PATH"] ?? ""])
        #expect(result.status == 0, "pkcs11-tool \(arguments): \(result.stderr)")
        return result
    }

    /// Generates a new AES-256 key of the test's own on the token and returns its label.
    static func createKey(extractable: Bool = false) async throws -> String {
        let label = "test-" + UUID().uuidString.lowercased()
        try await tool(
            ["--keygen", "--key-type", "AES:32", "--label", label, "--usage-decrypt"]
                + (extractable ? ["--extractable"] : ["--sensitive"]))
        return label
    }

    static func deleteKey(_ label: String) async throws {
        try await tool(["--delete-object", "--type", "secrkey", "--label", label])
    }

    /// Runs Scripts/interop/pkcs11_kms.py (python-pkcs11) with a JSON request.
    static func python(_ request: [String: Any]) async throws -> [String: String] {
        let python = try requireTool("python3", installedBy: "python3")
        let input = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        let environment = variables.filter {
            $0.key.hasPrefix("DBKEY_TEST_PKCS11_") || ["PATH", "HOME", "SOFTHSM2_CONF"].contains($0.key)
        }
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/pkcs11_kms.py"], input: input, environment: environment)
        #expect(result.status == 0, "pkcs11_kms.py failed: \(result.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: String])
    }
}

extension SoftHSM {
    /// SoftHSM's file-backed token is shared by this process and the `pkcs11-tool` and `dbkey`
    /// processes the tests start; a key created or deleted by one while another walks the
    /// token's objects is sometimes not seen. Every test that touches the token runs alone.
    static func exclusively<Result>(_ body: () async throws -> Result) async throws -> Result {
        await lock.acquire()
        do {
            let result = try await body()
            await lock.release()
            return result
        } catch {
            await lock.release()
            throw error
        }
    }

    private static let lock = TokenLock()

    private actor TokenLock {
        private var held = false
        private var waiters: [CheckedContinuation<Void, Never>] = []

        func acquire() async {
            guard held else {
                held = true
                return
            }
            await withCheckedContinuation { waiters.append($0) }
        }

        func release() {
            if waiters.isEmpty {
                held = false
            } else {
                waiters.removeFirst().resume()
            }
        }
    }
}
