import ArgumentParser

@main
struct DBKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dbkey",
        abstract: "Encrypted SQLCipher databases with keys from a key management service.",
        discussion: """
            KEKs are named by URI: local://default (the local master key, from $DBKEY_MASTER_KEY, \
            the file named by $DBKEY_MASTER_KEY_FILE, or ~/.config/dbkey/master.key).
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
