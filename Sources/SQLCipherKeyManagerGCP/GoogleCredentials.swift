import Crypto
import _CryptoExtras
import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// Where ``GoogleCloudKms`` gets its OAuth 2.0 access tokens, found as Google's client libraries find
/// Application Default Credentials.
///
/// In order: an access token in `GOOGLE_OAUTH_ACCESS_TOKEN` (as Terraform's Google provider
/// reads it); the service-account key file named by `GOOGLE_APPLICATION_CREDENTIALS`; gcloud's
/// application-default file (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`,
/// `application_default_credentials.json`) when it holds a service-account key; the metadata
/// server of Compute Engine, GKE, Cloud Run and Cloud Functions (`GCE_METADATA_HOST`, default
/// `metadata.google.internal`).
///
/// A service-account key never leaves secure memory but to be parsed by swift-crypto for one
/// signature: DBKey signs an RS256 JWT with it and exchanges that at the key file's
/// `token_uri`. Key files must be readable by their owner only, as DBKey's own key files are.
public struct GoogleCredentials: Sendable {
    enum Source: Sendable {
        case accessToken(SecureBuffer)
        case serviceAccount(ServiceAccountKey)
        case metadataServer(URL)
    }

    let source: Source

    /// The OAuth scope DBKey asks for: Cloud KMS only.
    static let scope = "https://www.googleapis.com/auth/cloudkms"

    /// Credentials from a fixed access token (refreshed by whoever issued it).
    public static func accessToken(_ token: SecureBuffer) -> GoogleCredentials {
        GoogleCredentials(source: .accessToken(token))
    }

    /// Credentials from a service-account JSON key file.
    ///
    /// - Throws: key-file codes for a file that is missing, too large or readable by others;
    ///   ``DBKeyError/Code-swift.struct/invalidConfiguration`` for one that is not a
    ///   service-account key.
    public static func serviceAccount(keyFile path: String) throws -> GoogleCredentials {
        GoogleCredentials(source: .serviceAccount(try ServiceAccountKey(path: path)))
    }

    /// Finds credentials as described above.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a key file of a kind
    ///   DBKey does not read, or an endpoint that is not https.
    public static func fromEnvironment(_ environment: ProviderEnvironment) throws -> GoogleCredentials {
        if let token = environment["GOOGLE_OAUTH_ACCESS_TOKEN"], !token.isEmpty {
            return accessToken(try Passphrase.fromText(token, kind: "Google access token"))
        }
        if let path = environment["GOOGLE_APPLICATION_CREDENTIALS"], !path.isEmpty {
            return try serviceAccount(keyFile: path)
        }
        let configuration =
            environment["CLOUDSDK_CONFIG"] ?? environment["HOME"].map { $0 + "/.config/gcloud" } ?? "/nonexistent"
        let applicationDefault = configuration + "/application_default_credentials.json"
        if FileManager.default.fileExists(atPath: applicationDefault) {
            return try serviceAccount(keyFile: applicationDefault)
        }
        let host = environment["GCE_METADATA_HOST"].flatMap { $0.isEmpty ? nil : $0 } ?? "metadata.google.internal"
        guard
            let url = URL(string: "http://\(host)/computeMetadata/v1/instance/service-accounts/default/token"),
            url.host != nil
        else {
            throw DBKeyError(.invalidConfiguration, "GCE_METADATA_HOST \"\(host)\" is not a host[:port].")
        }
        return GoogleCredentials(source: .metadataServer(url))
    }

    /// A description of the source, with no secret: for messages.
    var summary: String {
        switch source {
        case .accessToken: "the access token in GOOGLE_OAUTH_ACCESS_TOKEN"
        case .serviceAccount(let key): "the service account \(key.clientEmail)"
        case .metadataServer(let url): "the metadata server at \(url.host ?? "?")"
        }
    }

    /// A new access token from the source.
    func fetchToken(_ client: KmsHTTPClient) async throws -> BearerToken {
        switch source {
        case .accessToken(let token):
            // Nothing to refresh it with: it is used until the service refuses it.
            return BearerToken(value: token, lifetime: .seconds(3600))
        case .serviceAccount(let key):
            let assertion = try key.signedAssertion(scope: GoogleCredentials.scope)
            let form = FormBody.encode([
                ("grant_type", .text("urn:ietf:params:oauth:grant-type:jwt-bearer")), ("assertion", .secret(assertion)),
            ])
            var body = try await client.send(
                "token", method: "POST", url: key.tokenURI, body: .secret(form),
                headers: { _ in [("Content-Type", "application/x-www-form-urlencoded")] },
                mapError: { status, body in
                    GoogleCredentials.tokenError(
                        status: status, body: body, what: "the service account \(key.clientEmail)")
                })
            return try BearerToken.taking(from: &body, issuer: key.tokenURI.absoluteString)
        case .metadataServer(let url):
            do {
                var body = try await client.probing().send(
                    "metadata token", method: "GET", url: url, body: .none,
                    headers: { _ in [("Metadata-Flavor", "Google")] },
                    mapError: { status, body in
                        GoogleCredentials.tokenError(status: status, body: body, what: "the metadata server")
                    })
                return try BearerToken.taking(from: &body, issuer: "the metadata server")
            } catch let error as DBKeyError where error.code == .kmsUnavailable {
                throw DBKeyError(
                    .kmsAccessDenied,
                    "No Google credentials: GOOGLE_OAUTH_ACCESS_TOKEN and GOOGLE_APPLICATION_CREDENTIALS are unset, there is no gcloud application-default key file, and the metadata server at \(url.host ?? "?") did not answer (\(error.message)). Set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run on Google Cloud with a service account attached.",
                    underlying: error)
            }
        }
    }

    /// Maps a token endpoint's error (`{"error": "invalid_grant", "error_description": …}`).
    static func tokenError(status: Int, body: Data, what: String) -> DBKeyError {
        let object = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        let detail = [object["error"] as? String, object["error_description"] as? String].compactMap { $0 }
            .joined(separator: ": ")
        let message = "The token request for \(what) failed with HTTP \(status)\(detail.isEmpty ? "" : ": \(detail)")"
        if status >= 500 || status == 429 || status == 0 {
            return DBKeyError(.kmsUnavailable, "\(message). Try again later.")
        }
        return DBKeyError(
            .kmsAccessDenied, "\(message). Check that the key is active and the account not disabled or deleted.")
    }
}

/// A service account's JSON key file, its private key in secure memory.
struct ServiceAccountKey: Sendable {
    let clientEmail: String
    let privateKeyId: String?
    let tokenURI: URL
    /// The private key's DER (PKCS#8 or PKCS#1).
    let privateKey: SecureBuffer

    /// Reads and checks the key file.
    init(path: String) throws {
        let file = try ProtectedFile.read(
            at: path, maxSize: 16384, kind: "Google service-account key file", missingCode: .keyFileMissing)
        var body = file.withUnsafeBytes { Data($0) }
        defer { body.wipe() }
        let pem = JSONSecretField.takeText("private_key", from: &body)
        // The secrets of other kinds of credential file are blanked before the file is parsed.
        for field in ["client_secret", "refresh_token", "access_token"] {
            _ = JSONSecretField.takeText(field, from: &body)
        }
        guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            throw DBKeyError(.invalidConfiguration, "\(path) is not JSON.")
        }
        guard object["type"] as? String == "service_account", let pem else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(path) is a \(object["type"] as? String ?? "untyped") credential file; DBKey reads service-account keys only (type service_account). For a user's gcloud login, set GOOGLE_OAUTH_ACCESS_TOKEN=$(gcloud auth print-access-token)."
            )
        }
        guard let email = object["client_email"] as? String, !email.isEmpty else {
            throw DBKeyError(.invalidConfiguration, "\(path) has no client_email.")
        }
        clientEmail = email
        privateKeyId = object["private_key_id"] as? String
        tokenURI = try EndpointURL.requiringTLS(
            object["token_uri"] as? String ?? "https://oauth2.googleapis.com/token", what: "token_uri of \(path)")
        guard let der = ServiceAccountKey.der(ofPEM: pem) else {
            throw DBKeyError(.invalidConfiguration, "The private_key of \(path) is not a PEM private key.")
        }
        privateKey = der
    }

    /// The base64 between a PEM's `-----BEGIN …-----` and `-----END …-----` lines, decoded.
    static func der(ofPEM pem: SecureBuffer) -> SecureBuffer? {
        pem.withUnsafeBytes { bytes -> SecureBuffer? in
            let dashes = Array("-----".utf8)
            // The header ends at the first newline; the footer starts at the last "-----" run's start.
            guard let headerEnd = bytes.firstIndex(of: UInt8(ascii: "\n")),
                let footer = bytes[(headerEnd + 1)...].firstRange(of: dashes)?.lowerBound
            else { return nil }
            var length = 0
            let text = SecureBuffer(count: footer - headerEnd) { output in
                for byte in bytes[(headerEnd + 1)..<footer] where byte > 0x20 {
                    output[length] = byte
                    length += 1
                }
            }
            return text.withUnsafeBytes {
                SecureBuffer.decodingBase64(UnsafeRawBufferPointer(rebasing: $0.prefix(length)))
            }
        }
    }

    /// An RS256 JWT asserting the account for `scope` at the token endpoint, valid for an hour.
    func signedAssertion(scope: String) throws -> SecureBuffer {
        let now = Int(Date().timeIntervalSince1970)
        var header: [String: Any] = ["alg": "RS256", "typ": "JWT"]
        if let privateKeyId { header["kid"] = privateKeyId }
        let claims: [String: Any] = [
            "iss": clientEmail, "scope": scope, "aud": tokenURI.absoluteString, "iat": now, "exp": now + 3600,
        ]
        func encoded(_ object: [String: Any]) throws -> String {
            Base64URL.encode(Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])))
        }
        let signingInput = try encoded(header) + "." + encoded(claims)
        let signature: _RSA.Signing.RSASignature
        do {
            let key = try privateKey.withUnsafeBytes { try _RSA.Signing.PrivateKey(derRepresentation: $0) }
            signature = try key.signature(for: SHA256.hash(data: Array(signingInput.utf8)), padding: .insecurePKCS1v1_5)
        } catch {
            throw DBKeyError(
                .invalidConfiguration,
                "The service account \(clientEmail)'s private key cannot sign (it must be an RSA key of 2048 bits or more)."
            )
        }
        // The signed assertion is a credential for an hour: it is put together in secure memory.
        var signatureBytes = signature.rawRepresentation
        defer { signatureBytes.wipe() }
        let encodedSignature = Base64URL.encode(signatureBytes.withUnsafeBytes { SecureBuffer(copying: $0) })
        let prefix = Array((signingInput + ".").utf8)
        return SecureBuffer(count: prefix.count + encodedSignature.count) { output in
            output.copyBytes(from: prefix)
            encodedSignature.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: output[prefix.count...]).copyMemory(from: $0)
            }
        }
    }
}
