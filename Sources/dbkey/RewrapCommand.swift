import ArgumentParser
import SQLCipherKeyManager

struct RewrapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewrap",
        abstract: "Wrap the same data key under another KEK or provider; the database is not touched.",
        discussion: """
            One atomic write of the .key file, as fast for 1 GB as for 1 MB. Open connections \
            are not disturbed. The new wrap is checked before it replaces the old one.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @Option(
        help:
            "The KEK to wrap the data key under, as a URI: local://default, or local:///PATH for the master key in the file PATH."
    )
    var to: String

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let manager = try common.existingDatabaseManager(database, logger: logger)
            let target = try KekURI(to)
            let keyFile = try await manager.rewrap(
                to: try target.makeProvider(logger: logger), kekId: target.providerKekId)
            if json {
                Output.printJSON([
                    "database": database, "kms": keyFile.kms, "kek_id": keyFile.kekId, "dek_version": keyFile.version,
                ])
            } else {
                print(
                    "Rewrapped the key of \(database) under \(keyFile.kms) KEK \(keyFile.kekId) (key version \(keyFile.version) unchanged)."
                )
            }
        }
    }
}
