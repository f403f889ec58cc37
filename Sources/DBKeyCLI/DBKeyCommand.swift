import ArgumentParser
import Foundation
import SQLCipherKeyManager

/// The `dbkey` command line, as a library so that a build of it can bring its own providers.
///
/// The `dbkey` executable is one line:
///
/// ```swift
/// await DBKeyCommand.main(providers: [
///     LocalKms.factory, AWSKms.factory, VaultTransit.factory, Pkcs11Kms.factory, GoogleCloudKms.factory,
///     AzureKeyVault.factory, Tpm2Kms.factory,
/// ])
/// ```
public struct DBKeyCommand: AsyncParsableCommand {
    /// The providers the running command may use: every KEK URI and `.key` file is resolved
    /// through a registry of these.
    @TaskLocal static var providers: [KmsProviderFactory] = [LocalKms.factory]

    public init() {}

    /// The command line, its help naming each registered provider's KEK URIs and where it
    /// finds its configuration.
    public static var configuration: CommandConfiguration {
        CommandConfiguration(
            commandName: "dbkey",
            abstract: "Encrypted SQLCipher databases with keys from a key management service.",
            discussion: """
                KEKs are named by URI, in the forms of the registered providers:
                \(providerHelp)
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
    }

    /// Each registered provider's KEK URI forms, and where it finds its configuration.
    static var providerHelp: String {
        providers.map { factory in
            "  " + factory.uriForms.joined(separator: " | ") + (factory.help.isEmpty ? "" : "\n    " + factory.help)
        }.joined(separator: "\n")
    }

    /// Hardens the process, then parses and runs the command line with `providers`, and
    /// exits at once, without running library destructors (see the PKCS#11 section of the article "Key Management Providers").
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
        // The help and error messages are written under the same providers as the command runs.
        await $providers.withValue(providers) {
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
        }
        ProcessHardening.exitNow(0)
    }

    /// Parses and runs one command line in this process with `providers` (for embedding and
    /// tests): output goes to this process's standard output and error.
    ///
    /// - Throws: `ExitCode` with the command's exit status on failure, or the parser's error.
    public static func run(_ arguments: [String], providers: [KmsProviderFactory]) async throws {
        try await $providers.withValue(providers) {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        }
    }
}
