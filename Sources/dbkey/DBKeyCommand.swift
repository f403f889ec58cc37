import ArgumentParser
import Foundation

@main
struct DBKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dbkey",
        abstract: "Encrypted SQLCipher databases with keys from a key management service.",
        discussion: """
            KEKs are named by URI: local://default (the local master key, from $DBKEY_MASTER_KEY, \
            the file named by $DBKEY_MASTER_KEY_FILE, or ~/.config/dbkey/master.key), \
            local:///PATH (the master key in a file), aws-kms://arn:aws:kms:… or \
            aws-kms://alias/NAME (AWS credentials, region and endpoint as the AWS SDKs find them; \
            $AWS_MAX_ATTEMPTS and $DBKEY_KMS_TIMEOUT_SECONDS for retries).
            Secrets are read from the environment or files, never from arguments.

            EXIT CODES
            \(ExitStatus.helpTable)
            """,
        version: "0.1.0",
        subcommands: [
            InitCommand.self, StatusCommand.self, VerifyCommand.self, SQLCommand.self,
            RotateCommand.self, RewrapCommand.self, MigrateCommand.self,
        ]
    )

    /// Hardens the process, then parses and runs the command as AsyncParsableCommand would.
    static func main() async {
        if !ProcessHardening.disableCoreDumps() {
            try? FileHandle.standardError.write(
                contentsOf: Data("dbkey: warning: could not turn off core dumps\n".utf8))
        }
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
