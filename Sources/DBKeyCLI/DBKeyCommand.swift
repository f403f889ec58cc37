import ArgumentParser
import Foundation
import SQLCipherKeyManager

/// The `dbkey` command line, as a library so that a build of it can bring its own providers.
///
/// The `dbkey` executable is one line:
///
/// ```swift
/// await DBKeyCommand.main(providers: [
///     LocalKms.factory, AwsKms.factory, VaultTransit.factory, Pkcs11Kms.factory, CloudKms.factory,
///     AzureKeyVault.factory, Tpm2Kms.factory,
/// ])
/// ```
public struct DBKeyCommand: AsyncParsableCommand {
    /// The providers the running command may use: every KEK URI and `.key` file is resolved
    /// through a registry of these.
    @TaskLocal static var providers: [KmsProviderFactory] = [LocalKms.factory]

    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "dbkey",
        abstract: "Encrypted SQLCipher databases with keys from a key management service.",
        discussion: """
            KEKs are named by URI: local://default (the local master key, from $DBKEY_MASTER_KEY, \
            the file named by $DBKEY_MASTER_KEY_FILE, or ~/.config/dbkey/master.key), \
            local:///PATH (the master key in a file), aws-kms://arn:aws:kms:… or \
            aws-kms://alias/NAME (AWS credentials, region and endpoint as the AWS SDKs find them; \
            $AWS_MAX_ATTEMPTS and $DBKEY_KMS_TIMEOUT_SECONDS for retries), \
            vault://MOUNT/keys/NAME (Vault or OpenBao Transit: $VAULT_ADDR, and $VAULT_TOKEN, \
            $DBKEY_VAULT_TOKEN_FILE or ~/.vault-token), pkcs11:token=LABEL;object=LABEL (module \
            $DBKEY_PKCS11_MODULE; PIN from $DBKEY_PKCS11_PIN_FILE or $DBKEY_PKCS11_PIN).
            Secrets are read from the environment or files, never from arguments.

            EXIT CODES
            \(ExitStatus.helpTable)
            """,
        version: "0.1.0",
        subcommands: [
            InitCommand.self, StatusCommand.self, VerifyCommand.self, SQLCommand.self,
            RotateCommand.self, RewrapCommand.self, MigrateCommand.self, UpgradeCommand.self,
            SlotCommand.self, RecoverCommand.self, EscrowCommand.self, DoctorCommand.self, BackupCommand.self,
            RestoreCommand.self,
        ]
    )

    /// Hardens the process, then parses and runs the command line with `providers`, and
    /// exits at once, without running library destructors (see the PKCS#11 section of <doc:KeyManagementProviders>).
    public static func main(providers: [KmsProviderFactory]) async {
        ProcessHardening.quietCrashes()
        if !ProcessHardening.disableCoreDumps() {
            try? FileHandle.standardError.write(
                contentsOf: Data("dbkey: warning: could not turn off core dumps\n".utf8))
        }
        // dbkey reports wrong keys and damage as typed errors: SQLCipher 4's own stderr log
        // ("ERROR CORE … hmac check failed") would only repeat them. A library leaves this
        // process-wide setting to its app; the tool is its own app.
        try? SQLCipherEngine.setLogLevel(.none)
        do {
            try await DBKeyCommand.run(Array(CommandLine.arguments.dropFirst()), providers: providers)
        } catch {
            // What exit(withError:) does, but ending through exitNow.
            let status = exitCode(for: error)
            let message = fullMessage(for: error)
            if !message.isEmpty {
                let stream = status == .success ? FileHandle.standardOutput : FileHandle.standardError
                try? stream.write(contentsOf: Data((message + "\n").utf8))
            }
            ProcessHardening.exitNow(status.rawValue)
        }
        ProcessHardening.exitNow(0)
    }

    /// Parses and runs one command line in this process with `providers` (for embedding and
    /// tests): output goes to this process's standard output and error.
    ///
    /// - Throws: `ExitCode` with the command's exit status on failure, or the parser's error.
    public static func run(_ arguments: [String], providers: [KmsProviderFactory]) async throws {
        var command = try parseAsRoot(arguments)
        try await $providers.withValue(providers) {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        }
    }
}
