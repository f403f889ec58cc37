import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// AWS credentials, found the way the AWS SDKs find them.
///
/// The secret access key lives in a ``SecureBuffer``; the description shows only the access key
/// id, which is an identifier, not a secret.
public struct AWSCredentials: Sendable, CustomStringConvertible {
    /// The access key id (`AKIA…`, `ASIA…`).
    public let accessKeyId: String
    /// The secret access key.
    public let secretAccessKey: SecureBuffer
    /// The session token of temporary credentials. HTTP headers are text, so it is held as a
    /// `String` for the time the provider lives.
    let sessionToken: String?

    /// Creates credentials.
    public init(accessKeyId: String, secretAccessKey: SecureBuffer, sessionToken: String? = nil) {
        self.accessKeyId = accessKeyId
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String {
        "AWSCredentials(\(accessKeyId), secret redacted\(sessionToken == nil ? "" : ", session token redacted"))"
    }
}

/// Where the AWS provider's settings come from: the variables and files the AWS SDKs read.
struct AWSEnvironment {
    let variables: [String: String]

    /// The profile: `AWS_PROFILE`, else `default`.
    var profile: String { variables["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default" }

    var home: String { variables["HOME"] ?? NSHomeDirectory() }

    /// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, else the
    /// profile in the shared credentials file, else the profile in the config file.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsAccessDenied`` when none are found.
    func credentials() throws -> AWSCredentials {
        if let id = variables["AWS_ACCESS_KEY_ID"], !id.isEmpty, var secret = variables["AWS_SECRET_ACCESS_KEY"] {
            let secretBuffer = secret.withUTF8 { SecureBuffer(copying: UnsafeRawBufferPointer($0)) }
            return AWSCredentials(
                accessKeyId: id, secretAccessKey: secretBuffer, sessionToken: variables["AWS_SESSION_TOKEN"])
        }
        let credentialsPath = variables["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        let configPath = variables["AWS_CONFIG_FILE"] ?? home + "/.aws/config"
        for (path, section) in [
            (credentialsPath, profile), (configPath, profile == "default" ? "default" : "profile \(profile)"),
        ] {
            guard let values = try AWSConfigFile.section(section, in: path),
                let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"]
            else { continue }
            return AWSCredentials(
                accessKeyId: id.string,
                secretAccessKey: secret.buffer,
                sessionToken: values["aws_session_token"]?.string
            )
        }
        throw DBKeyError(
            .kmsAccessDenied,
            "No AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add the profile \"\(profile)\" to \(credentialsPath)."
        )
    }

    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, else the profile's `region` in the config file.
    func region() throws -> String? {
        for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
            if let region = variables[name], !region.isEmpty { return region }
        }
        let configPath = variables["AWS_CONFIG_FILE"] ?? home + "/.aws/config"
        let section = profile == "default" ? "default" : "profile \(profile)"
        return try AWSConfigFile.section(section, in: configPath)?["region"]?.string
    }

    /// `AWS_ENDPOINT_URL_KMS`, else `AWS_ENDPOINT_URL`, else nil (the public endpoint).
    var endpointOverride: String? {
        for name in ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"] {
            if let url = variables[name], !url.isEmpty { return url }
        }
        return nil
    }
}

/// The AWS shared credentials and config files: INI sections of `key = value` lines.
///
/// Values are read into secure memory, since these files hold secret keys; the files get the
/// same permission checks as key files.
enum AWSConfigFile {
    /// A value from the file, held in secure memory until a caller needs it as text.
    struct Value {
        let buffer: SecureBuffer
        /// The value as text; only for values that are not secret (ids, regions, tokens sent in
        /// headers).
        var string: String { buffer.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
    }

    /// The `key = value` pairs of a section, or `nil` when the file or the section is absent.
    static func section(_ name: String, in path: String) throws -> [String: Value]? {
        let contents: SecureBuffer
        do {
            contents = try ProtectedFile.read(
                at: path, maxSize: 1 << 20, kind: "AWS credentials file", missingCode: .keyFileMissing)
        } catch DBKeyError.Code.keyFileMissing {
            return nil
        }
        return contents.withUnsafeBytes { bytes -> [String: Value]? in
            var inSection = false
            var found = false
            var values: [String: Value] = [:]
            for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
                let trimmed = trim(line)
                guard let first = trimmed.first, first != UInt8(ascii: "#"), first != UInt8(ascii: ";") else {
                    continue
                }
                if first == UInt8(ascii: "["), trimmed.last == UInt8(ascii: "]") {
                    let header = String(decoding: trim(trimmed.dropFirst().dropLast()), as: UTF8.self)
                    inSection = header == name
                    found = found || inSection
                    continue
                }
                guard inSection, let equals = trimmed.firstIndex(of: UInt8(ascii: "=")) else { continue }
                let key = String(decoding: trim(trimmed[..<equals]), as: UTF8.self).lowercased()
                let value = trim(trimmed[trimmed.index(after: equals)...])
                values[key] = Value(buffer: SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: value)))
            }
            return found ? values : nil
        }
    }

    private static func trim(_ bytes: Slice<UnsafeRawBufferPointer>) -> Slice<UnsafeRawBufferPointer> {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }
        var slice = bytes
        while let first = slice.first, isSpace(first) { slice = slice.dropFirst() }
        while let last = slice.last, isSpace(last) { slice = slice.dropLast() }
        return slice
    }
}
