import Foundation
import KmsHTTP
import SQLCipherKeyManager

/// The Azure CLI's sign-in (`az login`), as azure-identity's `AzureCliCredential` uses it:
/// `az account get-access-token --output json --resource RESOURCE [--tenant TENANT]`, stopped
/// after 10 seconds.
struct AzureCLI: Sendable {
    let executable: String
    /// The CLI's environment: this process's, with the provider environment's `PATH`, `HOME`,
    /// `AZURE_CONFIG_DIR` and `REQUESTS_CA_BUNDLE` where it sets them.
    let environment: [String: String]

    static let timeout: Duration = .seconds(10)

    /// The `az` on the provider environment's `PATH`, or `nil` when there is none.
    static func find(_ variables: ProviderEnvironment) -> AzureCLI? {
        let process = ProcessInfo.processInfo.environment
        guard let executable = CredentialCommand.find("az", in: variables["PATH"] ?? process["PATH"] ?? "/usr/bin:/bin")
        else { return nil }
        var environment = process
        for name in ["PATH", "HOME", "AZURE_CONFIG_DIR", "REQUESTS_CA_BUNDLE"] {
            if let value = variables[name] { environment[name] = value }
        }
        environment["AZURE_CORE_NO_COLOR"] = "true"
        return AzureCLI(executable: executable, environment: environment)
    }

    var summary: String { "the Azure CLI's sign-in (\(executable))" }

    /// A token for what `challenge` asks, in the tenant it names.
    func token(for challenge: AuthenticationChallenge) async throws -> BearerToken {
        var arguments = ["account", "get-access-token", "--output", "json", "--resource", challenge.resource]
        if let tenant = challenge.tenant { arguments += ["--tenant", tenant] }
        var result = try await CredentialCommand.run(
            executable, arguments, environment: environment, timeout: AzureCLI.timeout,
            what: "The Azure CLI (\(executable))")
        defer { result.standardOutput.wipe() }
        guard result.status == 0 else { throw failure(result.standardError, resource: challenge.resource) }
        guard let token = JSONSecretField.takeText("accessToken", from: &result.standardOutput), token.count > 0,
            let fields = try? JSONSerialization.jsonObject(with: result.standardOutput) as? [String: Any]
        else {
            throw DBKeyError(.kmsAccessDenied, "The Azure CLI (\(executable)) answered without an accessToken.")
        }
        // `expires_on` (seconds since 1970) from CLI 2.54 on; before, only `expiresOn`, a local time.
        let expires: Date?
        if let seconds = (fields["expires_on"] as? NSNumber)?.doubleValue {
            expires = Date(timeIntervalSince1970: seconds)
        } else {
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.dateFormat = "yyyy-MM-dd HH:mm:ss.SSSSSS"
            expires = (fields["expiresOn"] as? String).flatMap(formatter.date(from:))
        }
        guard let lifetime = expires?.timeIntervalSinceNow, lifetime > 0 else {
            throw DBKeyError(.kmsAccessDenied, "The Azure CLI (\(executable)) answered with a token that has expired.")
        }
        return BearerToken(value: token, lifetime: .seconds(lifetime))
    }

    /// A failed `az`: not signed in (its message names `az login` or `az account set` and no
    /// Entra error), or refused, with the first line it printed (any access token blanked).
    private func failure(_ standardError: String, resource: String) -> DBKeyError {
        let said =
            standardError.replacing(#/"accessToken":\s*"[^"]*"/#, with: #""accessToken": "****""#)
            .split(separator: "\n").first { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            .map { String($0.prefix(300)) } ?? "nothing"
        if (standardError.contains("az login") || standardError.contains("az account set"))
            && !standardError.contains("AADSTS")
        {
            return DBKeyError(
                .kmsAccessDenied, "The Azure CLI (\(executable)) is not signed in: run az login. It said: \(said)")
        }
        return DBKeyError(
            .kmsAccessDenied, "The Azure CLI (\(executable)) could not get a token for \(resource). It said: \(said)")
    }
}
