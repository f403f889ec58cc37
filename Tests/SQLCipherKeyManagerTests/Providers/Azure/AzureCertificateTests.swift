import Foundation
import Synchronization
import Testing

@testable import KmsHTTP
@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerAzure

/// A service principal's certificate credential against the fake Entra, which checks each
/// client assertion as Entra does, and azure-identity given the same file.
@Suite("Azure client certificates", .tags(.azure))
struct AzureCertificateTests {
    let context: EncryptionContext = ["purpose": "azure-certificate-test"]

    struct Form: Sendable, CustomTestStringConvertible {
        let format: String
        let password: String?
        let chain: Bool
        var testDescription: String {
            "\(format)\(password == nil ? "" : " with a password")\(chain ? ", chain sent" : "")"
        }
    }

    static let forms = [
        Form(format: "pem", password: nil, chain: false), Form(format: "pem-rsa", password: nil, chain: false),
        Form(format: "pem-encrypted", password: "correct horse", chain: false),
        Form(format: "pkcs12", password: "correct horse", chain: true),
        Form(format: "pkcs12", password: nil, chain: false), Form(format: "pem", password: nil, chain: true),
    ]

    static func environment(
        clientId: String, path: String, password: String?, chain: Bool, directory: TemporaryDirectory
    )
        throws -> [String: String]
    {
        var environment = [
            "AZURE_TENANT_ID": try FakeKeyVault.value("TENANT"), "AZURE_CLIENT_ID": clientId,
            "AZURE_CLIENT_CERTIFICATE_PATH": path, "AZURE_AUTHORITY_HOST": try FakeKeyVault.origin().absoluteString,
            // Workload identity is set too: the certificate comes first, as in EnvironmentCredential.
            "AZURE_FEDERATED_TOKEN_FILE": directory.file("not-a-token"), "HOME": directory.path,
        ]
        if let password { environment["AZURE_CLIENT_CERTIFICATE_PASSWORD"] = password }
        if chain { environment["AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"] = "true" }
        return environment
    }

    @Test(
        "a certificate in each form azure-identity reads is taken before workload identity, and its assertion gets a token that reads the key",
        arguments: forms)
    func eachForm(form: Form) async throws {
        let directory = try TemporaryDirectory()
        let (clientId, path, thumbprint) = try await FakeKeyVault.certificateClient(
            format: form.format, password: form.password, chain: form.chain, in: directory)
        let environment = try Self.environment(
            clientId: clientId, path: path, password: form.password, chain: form.chain, directory: directory)
        let microsoft = try await FakeKeyVault.defaultAzureCredential(environment, key: "conformance-rsa")
        #expect(microsoft.credential == "EnvironmentCredential" && microsoft.status == 200, "\(microsoft)")

        let credentials = try AzureCredentials.fromEnvironment(ProviderEnvironment(environment))
        #expect(
            credentials.summary.contains(clientId) && credentials.summary.contains(thumbprint), "\(credentials.summary)"
        )
        let kekId = try FakeKeyVault.kekId("conformance-rsa")
        let transport = RecordingTransport()
        let kms = try FakeKeyVault.provider(credentials: credentials, transport: transport)
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: kekId, context: context) == dataKey.plaintext)
        // The chain goes in x5c only when asked for: the certificate, then its CA.
        let assertion = try #require(transport.formValue("client_assertion"))
        let header = try #require(
            Base64URL.decode(String(assertion.split(separator: ".")[0])).map { buffer in
                try buffer.withUnsafeBytes { try JSONSerialization.jsonObject(with: Data($0)) as? [String: Any] }
            })
        #expect(header?["alg"] as? String == "RS256")
        #expect((header?["x5c"] as? [String])?.count == (form.chain ? 2 : nil))
    }

    @Test(
        "a certificate Entra does not know is access denied naming the client and the thumbprint, never the assertion")
    func unregistered() async throws {
        let directory = try TemporaryDirectory()
        let (clientId, path, thumbprint) = try await FakeKeyVault.certificateClient(
            format: "pem", registered: false, in: directory)
        let transport = RecordingTransport()
        let kms = try FakeKeyVault.provider(
            credentials: try AzureCredentials.fromEnvironment(
                ProviderEnvironment(
                    try Self.environment(
                        clientId: clientId, path: path, password: nil, chain: false, directory: directory))),
            transport: transport)
        let error = await expectError(.kmsAccessDenied, containing: [clientId, thumbprint, "AADSTS700027"]) {
            _ = try await kms.generateDataKey(kekId: try FakeKeyVault.kekId("conformance-rsa"), context: context)
        }
        let assertion = try #require(transport.formValue("client_assertion"))
        #expect(assertion.split(separator: ".").count == 3)
        #expect(error?.message.contains(assertion) == false && error?.message.contains(assertion.suffix(40)) == false)
    }

    @Test(
        "files that cannot give an assertion are refused when read, with the reason and without the password",
        arguments: [
            ("pem-encrypted", "right password", nil as String?, "needs AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            ("pem-encrypted", "right password", "wrong password", "AZURE_CLIENT_CERTIFICATE_PASSWORD opens"),
            ("pkcs12", "right password", "wrong password", "AZURE_CLIENT_CERTIFICATE_PASSWORD opens"),
            ("pkcs12", "right password", nil, "set AZURE_CLIENT_CERTIFICATE_PASSWORD"),
            ("ec", nil, nil, "RSA of 2048 bits"),
        ])
    func refusedFiles(format: String, password: String?, given: String?, reason: String) async throws {
        let directory = try TemporaryDirectory()
        let (clientId, path, _) = try await FakeKeyVault.certificateClient(
            format: format == "ec" ? "pem" : format, password: password, key: format == "ec" ? "ec" : "rsa",
            in: directory)
        let environment = try Self.environment(
            clientId: clientId, path: path, password: given, chain: false, directory: directory)
        let thrown = #expect(throws: DBKeyError.self) {
            _ = try AzureCredentials.fromEnvironment(ProviderEnvironment(environment))
        }
        #expect(
            thrown?.code == .invalidConfiguration && thrown?.message.contains(reason) == true,
            "\(thrown?.message ?? "")")
        #expect(thrown?.message.contains(path) == true)
        for secret in [password, given].compactMap({ $0 }) { #expect(thrown?.message.contains(secret) == false) }
    }

    @Test(
        "a certificate file that is not PEM or PKCS #12, others can read, or that has no certificate of its key is refused"
    )
    func badFiles() async throws {
        let directory = try TemporaryDirectory()
        let (clientId, path, _) = try await FakeKeyVault.certificateClient(format: "pem", in: directory)
        let (_, otherPath, _) = try await FakeKeyVault.certificateClient(format: "pem", in: directory)
        func refusal(_ file: String) -> DBKeyError? {
            let environment = try? Self.environment(
                clientId: clientId, path: file, password: nil, chain: false, directory: directory)
            return #expect(throws: DBKeyError.self) {
                _ = try AzureCredentials.fromEnvironment(ProviderEnvironment(environment ?? [:]))
            }
        }
        let garbage = directory.file("garbage.pfx")
        AWSCredentialChainTests.write("not a certificate at all", to: garbage)
        #expect(refusal(garbage)?.message.contains("neither PEM nor a PKCS #12 file") == true)
        // This key with the other file's certificate.
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let otherText = try String(contentsOfFile: otherPath, encoding: .utf8)
        let mixed = directory.file("mixed.pem")
        let keyEnd = try #require(text.range(of: "-----BEGIN CERTIFICATE-----")).lowerBound
        let otherStart = try #require(otherText.range(of: "-----BEGIN CERTIFICATE-----")).lowerBound
        AWSCredentialChainTests.write(String(text[..<keyEnd]) + String(otherText[otherStart...]), to: mixed)
        #expect(refusal(mixed)?.message.contains("no certificate of its private key") == true)
        let readable = directory.file("readable.pem")
        AWSCredentialChainTests.write(text, to: readable, mode: 0o644)
        #expect(refusal(readable)?.code == .keyFileInsecure)
        await expectError(.invalidConfiguration, containing: ["AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_TENANT_ID"]) {
            _ = try AzureCredentials.fromEnvironment(["AZURE_CLIENT_CERTIFICATE_PATH": path])
        }
    }
}

/// Passes requests on and keeps the form fields of each token request.
final class RecordingTransport: KmsTransport {
    private let forms = Mutex<[[String: String]]>([])

    func formValue(_ name: String) -> String? { forms.withLock { $0.compactMap { $0[name] }.last } }

    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        if request.url.path.hasSuffix("/oauth2/v2.0/token") {
            var components = URLComponents()
            components.percentEncodedQuery = String(decoding: request.body, as: UTF8.self)
            let form = Dictionary(
                (components.queryItems ?? []).map { ($0.name, $0.value ?? "") }, uniquingKeysWith: { $1 })
            forms.withLock { $0.append(form) }
        }
        return try await URLSessionKmsTransport().send(request, timeout: timeout)
    }
}
