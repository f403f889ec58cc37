import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct RecoverCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover",
        abstract: "Open the key through a slot or an escrow key, and wrap it under a new primary KEK.",
        discussion: """
            For a database whose primary KEK is lost, deleted or refused. The key is unwrapped \
            through the named slot or escrow key alone (an interrupted key change is settled \
            with it), proven to open the database, and wrapped under --to. Never automatic; \
            an audit event. The recovery code is read from standard input, never from arguments.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @OptionGroup var through: SlotAccessOptions

    @Option(help: "The KEK to wrap the data key under as the new primary, as a URI.")
    var to: String

    @OptionGroup var wait: WaitOption

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard through.namedCount == 1 else {
            throw ValidationError(
                "Name exactly one of --escrow-private-key FILE, --recovery-code-stdin and --slot N.")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let access = try through.access()
            let target = try common.registry(logger: logger).target(forURI: to)
            let manager = common.existingDatabaseManager(database, logger: logger)
            let keyFile = try await manager.recover(
                through: access, to: target.provider, kekId: target.kekId, wait: wait.duration)
            if json {
                struct Recovered: Encodable { let recovered = true }
                Output.printJSON(KeyOutput(database: database, keyFile, Recovered()))
            } else {
                print(
                    "Recovered \(database): its data key (version \(keyFile.version)) is now wrapped under \(keyFile.kms ?? "?") KEK \(keyFile.kekId) as the primary."
                )
            }
        }
    }
}
