import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// A profile's `credential_process`: run without a shell (split as botocore's `shlex.split`
/// does), its standard output a JSON object with `Version` 1.
enum CredentialProcess {
    static func run(_ command: String) async throws -> Data {
        let arguments = split(command)
        guard let executable = arguments.first else {
            throw DBKeyError(.invalidConfiguration, "The profile's credential_process is empty.")
        }
        let direct = executable.contains("/")
        var result = try await CredentialCommand.run(
            direct ? executable : "/usr/bin/env", direct ? Array(arguments.dropFirst()) : arguments,
            what: "The credential_process \(executable)")
        guard result.status == 0 else {
            result.standardOutput.wipe()
            throw DBKeyError(.kmsAccessDenied, "The credential_process \(executable) exited with \(result.status).")
        }
        return result.standardOutput
    }

    /// Words as a POSIX shell would split them: whitespace, single and double quotes, backslash.
    static func split(_ command: String) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for character in command {
            if escaped {
                current.append(character)
                escaped = false
            } else if character == "\\" && quote != "'" {
                escaped = true
                inWord = true
            } else if let open = quote {
                if character == open { quote = nil } else { current.append(character) }
            } else if character == "'" || character == "\"" {
                quote = character
                inWord = true
            } else if character.isWhitespace {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(character)
                inWord = true
            }
        }
        if inWord { words.append(current) }
        return words
    }
}

/// EC2's instance metadata service, with IMDSv2 session tokens.
struct InstanceMetadata {
    let endpoint: URL
    let client: KmsHTTPClient

    func credentials() async throws -> (AWSCredentials, Date) {
        do {
            var token = try await client.send(
                "IMDS token", method: "PUT", url: endpoint.appendingPathComponent("latest/api/token"), body: .none,
                headers: { _ in [("X-aws-ec2-metadata-token-ttl-seconds", "21600")] },
                mapError: { status, _ in DBKeyError(.kmsUnavailable, "IMDS answered HTTP \(status) to a token request.")
                })
            let session = String(decoding: token, as: UTF8.self)
            token.wipe()
            let headers = [(name: "X-aws-ec2-metadata-token", value: session)]
            let base = endpoint.appendingPathComponent("latest/meta-data/iam/security-credentials/")
            let roles = try await client.send(
                "IMDS role", method: "GET", url: base, body: .none, headers: { _ in headers },
                mapError: { status, _ in
                    DBKeyError(
                        .kmsAccessDenied, "IMDS answered HTTP \(status): the instance has no IAM role attached.")
                })
            guard let role = String(decoding: roles, as: UTF8.self).split(separator: "\n").first.map(String.init) else {
                throw DBKeyError(.kmsAccessDenied, "IMDS lists no IAM role for this instance.")
            }
            var body = try await client.send(
                "IMDS credentials", method: "GET", url: base.appendingPathComponent(role), body: .none,
                headers: { _ in headers },
                mapError: { status, _ in
                    DBKeyError(.kmsAccessDenied, "IMDS answered HTTP \(status) for the role \(role).")
                })
            return try TemporaryCredentials.fromJSON(&body, tokenField: "Token", what: "IMDS")
        } catch let error as DBKeyError where error.code == .kmsUnavailable {
            throw DBKeyError(
                .kmsAccessDenied,
                "No AWS credentials: none in the environment, no web identity, no profile with keys or credential_process, no container endpoint, and the instance metadata service at \(endpoint.host ?? "?") did not answer (\(error.message)). Set AWS_PROFILE or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.",
                underlying: error)
        }
    }
}
