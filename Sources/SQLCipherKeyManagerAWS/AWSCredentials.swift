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
    let variables: ProviderEnvironment

    /// The profile: `AWS_PROFILE`, else `default`.
    var profile: String { variables["AWS_PROFILE"].flatMap { $0.isEmpty ? nil : $0 } ?? "default" }

    var home: String { variables["HOME"] ?? NSHomeDirectory() }

    var credentialsPath: String { variables["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials" }
    var configPath: String { variables["AWS_CONFIG_FILE"] ?? home + "/.aws/config" }

    private func variable(_ name: String) -> String? { variables[name].flatMap { $0.isEmpty ? nil : $0 } }

    /// Where the credentials come from, in botocore's order (see ``AWSCredentialProvider``).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a container endpoint
    ///   to a host AWS does not serve it from, an endpoint that is not a URL, or a profile that
    ///   assumes a role in a way DBKey cannot follow (a loop, a missing source, MFA).
    func credentialProvider(region: String?) throws -> AWSCredentialProvider {
        // 1. The environment.
        if let fixed = environmentCredentials() { return AWSCredentialProvider(fixed) }
        // 2. A profile that assumes a role with another source's credentials.
        if let role = try assumedRole(profile, region: region, visited: [profile]) {
            return AWSCredentialProvider(source: .assumeRole(role))
        }
        // 3.–7. Web identity, IAM Identity Center, the shared credentials file, credential_process,
        // the config file.
        if let found = try profileCredentials(profile, region: region, environmentWebIdentity: true) {
            return found
        }
        // 8. The container endpoint.
        if let container = try containerSource() { return AWSCredentialProvider(source: container) }
        // 9. The instance metadata service.
        return AWSCredentialProvider(source: try instanceMetadataSource())
    }

    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    func environmentCredentials() -> AWSCredentials? {
        guard let id = variable("AWS_ACCESS_KEY_ID"), var secret = variables["AWS_SECRET_ACCESS_KEY"] else {
            return nil
        }
        let secretBuffer = secret.withUTF8 { SecureBuffer(copying: UnsafeRawBufferPointer($0)) }
        return AWSCredentials(
            accessKeyId: id, secretAccessKey: secretBuffer, sessionToken: variable("AWS_SESSION_TOKEN"))
    }

    /// A profile's values as botocore merges them: the config file's section, with the
    /// credentials file's section over it; `nil` when neither file has the profile.
    func profileValues(_ name: String) throws -> [String: AWSConfigFile.Value]? {
        let config = try AWSConfigFile.section(AWSEnvironment.configSection(name), in: configPath)
        let credentials = try AWSConfigFile.section(name, in: credentialsPath)
        guard config != nil || credentials != nil else { return nil }
        return (config ?? [:]).merging(credentials ?? [:]) { $1 }
    }

    static func configSection(_ profile: String) -> String { profile == "default" ? "default" : "profile \(profile)" }

    /// The role the profile `name` assumes: when it has a `role_arn` and no
    /// `web_identity_token_file` (that one is web identity's), as botocore's AssumeRoleProvider.
    /// `visited` holds the profiles the chain has passed through, to refuse a loop.
    func assumedRole(_ name: String, region: String?, visited: [String]) throws -> AWSCredentialProvider.AssumedRole? {
        guard let values = try profileValues(name), let roleArn = values["role_arn"]?.string,
            values["web_identity_token_file"] == nil
        else { return nil }
        if let serial = values["mfa_serial"]?.string {
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profile \"\(name)\" assumes \(roleArn) with MFA (mfa_serial \(serial)), and DBKey runs unattended: it cannot ask for a code. Give DBKey a profile whose role does not require MFA, or a credential_process that hands out credentials of an MFA session."
            )
        }
        var duration: Int?
        if let text = values["duration_seconds"]?.string {
            guard let seconds = Int(text), (900...43_200).contains(seconds) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "The AWS profile \"\(name)\" has duration_seconds \"\(text)\"; STS takes 900 to 43200 seconds.")
            }
            duration = seconds
        }
        let source: AWSCredentialProvider
        switch (values["source_profile"]?.string, values["credential_source"]?.string) {
        case (_?, _?):
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profile \"\(name)\" has both source_profile and credential_source; keep one.")
        case (nil, nil):
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profile \"\(name)\" has a role_arn but no source_profile or credential_source to assume it with."
            )
        case (let sourceProfile?, nil):
            source = try credentials(ofSourceProfile: sourceProfile, for: name, region: region, visited: visited)
        case (nil, let named?):
            source = AWSCredentialProvider(source: try namedSource(named, for: name))
        }
        return AWSCredentialProvider.AssumedRole(
            roleArn: roleArn,
            sessionName: values["role_session_name"]?.string ?? "dbkey-\(Int(Date().timeIntervalSince1970 * 1000))",
            externalId: values["external_id"]?.string, durationSeconds: duration, source: source,
            endpoint: try stsEndpoint(region), region: region ?? "us-east-1")
    }

    /// The credentials of a `source_profile`: its keys, or its own role, or what else the
    /// profile holds (web identity, credential_process), never the environment's.
    private func credentials(ofSourceProfile name: String, for parent: String, region: String?, visited: [String])
        throws -> AWSCredentialProvider
    {
        guard let values = try profileValues(name) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The source_profile \"\(name)\" of the AWS profile \"\(parent)\" is in neither \(configPath) nor \(credentialsPath)."
            )
        }
        let hasKeys = values["aws_access_key_id"] != nil || values["aws_secret_access_key"] != nil
        // A profile may name itself as its source only to use its own keys.
        guard !visited.contains(name) || (name == parent && hasKeys) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profiles \((visited + [name]).map { "\"\($0)\"" }.joined(separator: " → ")) form a loop of source_profile."
            )
        }
        if !hasKeys, let role = try assumedRole(name, region: region, visited: visited + [name]) {
            return AWSCredentialProvider(source: .assumeRole(role))
        }
        guard let found = try profileCredentials(name, region: region, environmentWebIdentity: false) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The source_profile \"\(name)\" of the AWS profile \"\(parent)\" has no credentials (keys, a role, web identity or credential_process)."
            )
        }
        return found
    }

    /// A `credential_source`: `Environment`, `Ec2InstanceMetadata` or `EcsContainer`.
    private func namedSource(_ named: String, for profile: String) throws -> AWSCredentialProvider.Source {
        switch named {
        case "Environment":
            guard let fixed = environmentCredentials() else {
                throw DBKeyError(
                    .kmsAccessDenied,
                    "The AWS profile \"\(profile)\" assumes its role with the environment's credentials (credential_source Environment), and AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is not set."
                )
            }
            return .fixed(fixed)
        case "Ec2InstanceMetadata":
            return try instanceMetadataSource()
        case "EcsContainer":
            guard let container = try containerSource() else {
                throw DBKeyError(
                    .kmsAccessDenied,
                    "The AWS profile \"\(profile)\" assumes its role with the container's credentials (credential_source EcsContainer), and neither AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor AWS_CONTAINER_CREDENTIALS_FULL_URI is set."
                )
            }
            return container
        default:
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profile \"\(profile)\" has credential_source \"\(named)\"; it must be Environment, Ec2InstanceMetadata or EcsContainer."
            )
        }
    }

    /// What a profile holds itself, in botocore's order: web identity (with the environment's
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN` first, for the chain's own profile), IAM
    /// Identity Center, the shared credentials file's keys, `credential_process`, the config
    /// file's keys.
    private func profileCredentials(_ name: String, region: String?, environmentWebIdentity: Bool) throws
        -> AWSCredentialProvider?
    {
        let config = try AWSConfigFile.section(AWSEnvironment.configSection(name), in: configPath) ?? [:]
        let credentialsSection = try AWSConfigFile.section(name, in: credentialsPath)
        let tokenFile =
            (environmentWebIdentity ? variable("AWS_WEB_IDENTITY_TOKEN_FILE") : nil)
            ?? config["web_identity_token_file"]?.string
        let roleArn = (environmentWebIdentity ? variable("AWS_ROLE_ARN") : nil) ?? config["role_arn"]?.string
        if let tokenFile, let roleArn {
            let sessionName =
                (environmentWebIdentity ? variable("AWS_ROLE_SESSION_NAME") : nil) ?? config["role_session_name"]?
                .string
                ?? "dbkey-\(Int(Date().timeIntervalSince1970 * 1000))"
            return AWSCredentialProvider(
                source: .webIdentity(
                    tokenFile: tokenFile, roleArn: roleArn, sessionName: sessionName, endpoint: try stsEndpoint(region))
            )
        }
        if let sso = try ssoProfile(name, values: config.merging(credentialsSection ?? [:]) { $1 }) {
            return AWSCredentialProvider(source: .sso(sso))
        }
        if let fixed = credentialsSection.flatMap(AWSEnvironment.fixedCredentials) {
            return AWSCredentialProvider(fixed)
        }
        if let command = config["credential_process"]?.string {
            return AWSCredentialProvider(source: .process(command: command))
        }
        return AWSEnvironment.fixedCredentials(config).map { AWSCredentialProvider($0) }
    }

    /// The IAM Identity Center sign-in of the profile `name`, whose merged `values`
    /// (``profileValues(_:)``) the caller has read: when it has `sso_account_id` or
    /// `sso_role_name`, as botocore's SSOProvider, with the values of the `sso-session` it names
    /// (which must agree with its own).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a missing session or
    ///   value, values that disagree, or a region that is not one.
    func ssoProfile(_ name: String, values: [String: AWSConfigFile.Value]) throws -> SSOProfile? {
        guard values["sso_account_id"] != nil || values["sso_role_name"] != nil else { return nil }
        let keys = ["sso_start_url", "sso_region", "sso_account_id", "sso_role_name", "sso_registration_scopes"]
        var settings = values.filter { keys.contains($0.key) }.mapValues(\.string)
        let session = values["sso_session"]?.string
        if let session {
            guard let sessionValues = try AWSConfigFile.section("sso-session \(session)", in: configPath) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "The AWS profile \"\(name)\" names the sso-session \"\(session)\", which is not in \(configPath).")
            }
            for (key, value) in sessionValues where keys.contains(key) {
                if let own = settings[key], own != value.string {
                    throw DBKeyError(
                        .invalidConfiguration,
                        "The AWS profile \"\(name)\" has \(key) \"\(own)\" and its sso-session \"\(session)\" has \"\(value.string)\"; keep one."
                    )
                }
                settings[key] = value.string
            }
        }
        let missing = keys.dropLast().filter { settings[$0] == nil }
        guard missing.isEmpty, let startURL = settings["sso_start_url"], let region = settings["sso_region"],
            let accountId = settings["sso_account_id"], let roleName = settings["sso_role_name"]
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profile \"\(name)\" signs in with IAM Identity Center and lacks \(missing.joined(separator: ", "))\(session.map { " (in itself or its sso-session \"\($0)\")" } ?? "")."
            )
        }
        guard !region.isEmpty, region.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-") }) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The AWS profile \"\(name)\" has sso_region \"\(region)\", which is not a region.")
        }
        return SSOProfile(
            profile: name, startURL: startURL, region: region, accountId: accountId, roleName: roleName,
            session: session, tokenCache: SSOProfile.tokenCachePath(home: home, session: session, startURL: startURL),
            portal: try EndpointURL.requiringTLS(
                variable("AWS_ENDPOINT_URL_SSO") ?? variable("AWS_ENDPOINT_URL")
                    ?? "https://portal.sso.\(region).amazonaws.com", what: "IAM Identity Center portal"),
            oidc: try EndpointURL.requiringTLS(
                variable("AWS_ENDPOINT_URL_SSO_OIDC") ?? variable("AWS_ENDPOINT_URL")
                    ?? "https://oidc.\(region).amazonaws.com", what: "IAM Identity Center OIDC endpoint"))
    }

    /// EC2's instance metadata service: `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
    /// `169.254.169.254`; refused when `AWS_EC2_METADATA_DISABLED` is `true`.
    private func instanceMetadataSource() throws -> AWSCredentialProvider.Source {
        guard variable("AWS_EC2_METADATA_DISABLED")?.lowercased() != "true" else {
            throw DBKeyError(
                .kmsAccessDenied,
                "No AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add the profile \"\(profile)\" to \(credentialsPath) (the instance metadata service is disabled by AWS_EC2_METADATA_DISABLED)."
            )
        }
        let text = variable("AWS_EC2_METADATA_SERVICE_ENDPOINT") ?? "http://169.254.169.254"
        guard let endpoint = URL(string: text), endpoint.host != nil else {
            throw DBKeyError(.invalidConfiguration, "AWS_EC2_METADATA_SERVICE_ENDPOINT \"\(text)\" is not a URL.")
        }
        return .instanceMetadata(endpoint: endpoint)
    }

    static func fixedCredentials(_ values: [String: AWSConfigFile.Value]) -> AWSCredentials? {
        guard let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else { return nil }
        return AWSCredentials(
            accessKeyId: id.string, secretAccessKey: secret.buffer, sessionToken: values["aws_session_token"]?.string)
    }

    /// STS for web identity and assumed roles: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, else the region's
    /// endpoint (the global one without a region).
    func stsEndpoint(_ region: String?) throws -> URL {
        let text =
            variable("AWS_ENDPOINT_URL_STS") ?? variable("AWS_ENDPOINT_URL")
            ?? region.map { "https://sts.\($0).amazonaws.com/" } ?? "https://sts.amazonaws.com/"
        return try EndpointURL.requiringTLS(text, what: "STS endpoint")
    }

    /// The ECS/EKS container endpoint: `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` on
    /// `169.254.170.2`, or `AWS_CONTAINER_CREDENTIALS_FULL_URI` (https anywhere; http only to a
    /// loopback address or the container hosts `169.254.170.2`, `169.254.170.23`,
    /// `fd00:ec2::23`), with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    func containerSource() throws -> AWSCredentialProvider.Source? {
        let url: URL
        if let relative = variable("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            guard let made = URL(string: "http://169.254.170.2" + relative) else {
                throw DBKeyError(
                    .invalidConfiguration, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \"\(relative)\" is not a path.")
            }
            url = made
        } else if let full = variable("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            guard let made = URL(string: full), let host = made.host,
                made.scheme == "https"
                    || (made.scheme == "http"
                        && (EndpointURL.isLoopback(host)
                            || ["169.254.170.2", "169.254.170.23", "fd00:ec2::23", "[fd00:ec2::23]"].contains(host)))
            else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI \"\(full)\" must be https, or http to a loopback address or a container host (169.254.170.2, 169.254.170.23, fd00:ec2::23)."
                )
            }
            url = made
        } else {
            return nil
        }
        let authorization: AWSCredentialProvider.Authorization? =
            if let file = variable("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                .file(file)
            } else if let token = variable("AWS_CONTAINER_AUTHORIZATION_TOKEN") {
                .token(try Passphrase.fromText(token, kind: "AWS_CONTAINER_AUTHORIZATION_TOKEN"))
            } else {
                nil
            }
        return .container(url: url, authorization: authorization)
    }

    /// `AWS_REGION`, `AWS_DEFAULT_REGION`, else the profile's `region` in the config file.
    func region() throws -> String? {
        for name in ["AWS_REGION", "AWS_DEFAULT_REGION"] {
            if let region = variables[name], !region.isEmpty { return region }
        }
        return try AWSConfigFile.section(AWSEnvironment.configSection(profile), in: configPath)?["region"]?.string
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
