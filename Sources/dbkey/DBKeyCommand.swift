import ArgumentParser

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
}
