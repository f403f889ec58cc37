import COpenSSL
import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// A service principal's certificate credential, as azure-identity's `CertificateCredential`
/// reads it: a PEM file with the private key (PKCS #8 or PKCS #1, encrypted or not) and the
/// certificate, or a PKCS #12 file; with a password when the key or the file is encrypted.
///
/// The private key stays in OpenSSL, which clears it when it is freed. Each token request
/// sends a client assertion: an RS256 JWT naming the certificate by its SHA-1 thumbprint
/// (`x5t`), and with `AZURE_CLIENT_SEND_CERTIFICATE_CHAIN` the certificates themselves (`x5c`,
/// for subject name and issuer authentication).
final class ClientCertificate: @unchecked Sendable {
    /// The `EVP_PKEY`; OpenSSL's keys may sign from many threads, each with its own context.
    private let key: OpaquePointer
    /// The certificate's SHA-1 thumbprint, which Entra registers.
    let thumbprint: [UInt8]
    /// The DER of the certificate, then of the others in the file (its issuers).
    let chain: [[UInt8]]
    let path: String

    private init(key: OpaquePointer, thumbprint: [UInt8], chain: [[UInt8]], path: String) {
        self.key = key
        self.thumbprint = thumbprint
        self.chain = chain
        self.path = path
    }

    deinit { EVP_PKEY_free(key) }

    /// The thumbprint in hex, as the Azure portal shows it: for messages.
    var thumbprintHex: String { thumbprint.map { String(format: "%02X", $0) }.joined() }

    /// Reads the file at `path`, which gets the key-file checks: it holds a private key.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a file that is neither
    ///   PEM nor PKCS #12, a wrong or missing password, a key that is not RSA of 2048 bits or
    ///   more, or no certificate of the key; the read's errors for a missing or insecure file.
    static func load(path: String, password: SecureBuffer?) throws -> ClientCertificate {
        let contents = try ProtectedFile.read(
            at: path, maxSize: 1 << 20, kind: "Azure client certificate (AZURE_CLIENT_CERTIFICATE_PATH)",
            missingCode: .keyFileMissing)
        // OpenSSL takes the password NUL-terminated.
        let terminated = password.map { password in
            SecureBuffer(count: password.count + 1) { output in
                password.withUnsafeBytes { output.copyMemory(from: $0) }
                output[password.count] = 0
            }
        }
        func invalid(_ reason: String) -> DBKeyError {
            DBKeyError(.invalidConfiguration, "The Azure client certificate \(path) \(reason).")
        }
        var key: OpaquePointer?
        var certificates: [OpaquePointer] = []
        defer { certificates.forEach { X509_free($0) } }
        try contents.withUnsafeBytes { bytes in
            let isPEM = bytes.firstRange(of: Array("-----BEGIN".utf8)) != nil
            try withPassword(terminated) { password in
                if isPEM {
                    let keyBIO = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count))
                    defer { BIO_free(keyBIO) }
                    key = dbkey_pem_private_key(keyBIO, password)
                    let certificateBIO = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count))
                    defer { BIO_free(certificateBIO) }
                    while let certificate = dbkey_pem_certificate(certificateBIO) { certificates.append(certificate) }
                    ERR_clear_error()
                } else {
                    var certificate: OpaquePointer?
                    var others: OpaquePointer?
                    defer { dbkey_x509_stack_free(others) }
                    guard
                        dbkey_pkcs12_parse(
                            bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count, password ?? nil, &key,
                            &certificate, &others) == 1
                    else {
                        ERR_clear_error()
                        throw invalid(
                            password == nil
                                ? "is neither PEM nor a PKCS #12 file that opens without a password (set AZURE_CLIENT_CERTIFICATE_PASSWORD)"
                                : "is neither PEM nor a PKCS #12 file that AZURE_CLIENT_CERTIFICATE_PASSWORD opens")
                    }
                    certificates += [certificate].compactMap { $0 }
                    for index in 0..<dbkey_x509_stack_count(others) {
                        if let other = dbkey_x509_stack_value(others, index), X509_up_ref(other) == 1 {
                            certificates.append(other)
                        }
                    }
                }
            }
        }
        guard let key else {
            ERR_clear_error()
            throw invalid(
                password == nil
                    ? "has no private key that opens without a password (an encrypted key needs AZURE_CLIENT_CERTIFICATE_PASSWORD)"
                    : "has no private key that AZURE_CLIENT_CERTIFICATE_PASSWORD opens")
        }
        guard EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA, EVP_PKEY_get_bits(key) >= 2048 else {
            EVP_PKEY_free(key)
            throw invalid("has a key Entra does not take for a client assertion: it must be RSA of 2048 bits or more")
        }
        // The certificate is the key's; the others in the file follow it, as its chain.
        guard let leaf = certificates.firstIndex(where: { X509_check_private_key($0, key) == 1 }) else {
            ERR_clear_error()
            EVP_PKEY_free(key)
            throw invalid("has no certificate of its private key")
        }
        ERR_clear_error()
        let ordered = [certificates[leaf]] + certificates.enumerated().filter { $0.offset != leaf }.map(\.element)
        var digest = [UInt8](repeating: 0, count: 20)
        var length: UInt32 = 0
        guard X509_digest(ordered[0], EVP_sha1(), &digest, &length) == 1, length == 20 else {
            EVP_PKEY_free(key)
            throw invalid("cannot be fingerprinted")
        }
        let chain = ordered.map { certificate -> [UInt8] in
            let count = i2d_X509(certificate, nil)
            var der = [UInt8](repeating: 0, count: Int(max(count, 0)))
            der.withUnsafeMutableBufferPointer { buffer in
                var cursor = buffer.baseAddress
                _ = i2d_X509(certificate, &cursor)
            }
            return der
        }
        return ClientCertificate(key: key, thumbprint: digest, chain: chain, path: path)
    }

    private static func withPassword<R>(
        _ password: SecureBuffer?, _ body: (UnsafePointer<CChar>?) throws -> R
    ) rethrows -> R {
        guard let password else { return try body(nil) }
        return try password.withUnsafeBytes { try body($0.baseAddress?.assumingMemoryBound(to: CChar.self)) }
    }

    /// A client assertion for `audience` (the token endpoint), valid for 10 minutes, as MSAL
    /// makes one.
    func assertion(clientId: String, audience: String, sendChain: Bool) throws -> SecureBuffer {
        let now = Int(Date().timeIntervalSince1970)
        var header: [String: Any] = ["alg": "RS256", "typ": "JWT", "x5t": Base64URL.encode(thumbprint)]
        if sendChain { header["x5c"] = chain.map { Data($0).base64EncodedString() } }
        let claims: [String: Any] = [
            "aud": audience, "iss": clientId, "sub": clientId, "jti": UUID().uuidString.lowercased(), "iat": now,
            "nbf": now, "exp": now + 600,
        ]
        return try SignedJWT.make(header: header, claims: claims) { input in
            guard let context = EVP_MD_CTX_new() else { throw signingFailed() }
            defer { EVP_MD_CTX_free(context) }
            var length = 0
            guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key) == 1,
                EVP_DigestSign(context, nil, &length, input, input.count) == 1
            else { throw signingFailed() }
            var signature = [UInt8](repeating: 0, count: length)
            guard EVP_DigestSign(context, &signature, &length, input, input.count) == 1 else { throw signingFailed() }
            return Array(signature.prefix(length))
        }
    }

    private func signingFailed() -> DBKeyError {
        ERR_clear_error()
        return DBKeyError(.kmsUnavailable, "OpenSSL could not sign with the Azure client certificate \(path)'s key.")
    }
}
