import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct RewrapCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewrap",
        abstract: "Wrap the same data key under another KEK or provider; the database is not touched.",
        discussion: """
            One atomic write of the .key file, as fast for 1 GB as for 1 MB. Open connections \
            are not disturbed. The new wrap is checked before it replaces the old one. Without \
            --to, the key is rewrapped under the newest version of its own KEK (after a Vault \
            Transit key was rotated).
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @Option(
        help: """
            The KEK to wrap the data key under, as a URI: local://default, local:///PATH (the master key \
            in the file PATH), aws-kms://…, vault://MOUNT/keys/NAME, pkcs11:token=…;object=…. \
            Default: the KEK the key is wrapped under now, at its newest version.
            """
    )
    var to: String?

    @Option(help: "The key slot to rewrap (dbkey slot list); 0, the default, is the primary KEK.")
    var slot: Int = 0

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let manager = common.existingDatabaseManager(database, logger: logger)
            let target: any KeyManagementService
            let kekId: String
            if let to {
                let uri = try common.registry(logger: logger).target(forURI: to)
                (target, kekId) = (uri.provider, uri.kekId)
            } else {
                let keyFile = try manager.load()
                guard let current = keyFile.allSlots.first(where: { $0.number == slot }) else {
                    throw DBKeyError(.invalidConfiguration, "\(manager.keyFilePath) has no slot \(slot).")
                }
                (target, kekId) = (try manager.providers.provider(named: current.kms), current.kekId)
            }
            let keyFile = try await manager.rewrap(to: target, kekId: kekId, slot: slot)
            if json {
                Output.printJSON([
                    "database": database, "kms": keyFile.kms ?? NSNull(), "kek_id": keyFile.kekId,
                    "dek_version": keyFile.version,
                    "kek_version": target.keyVersion(of: keyFile.encryptedDek) ?? NSNull(),
                ])
            } else {
                let version = target.keyVersion(of: keyFile.encryptedDek).map { " version \($0)" } ?? ""
                print(
                    "Rewrapped the key of \(database) under \(keyFile.kms ?? "?") KEK \(keyFile.kekId)\(version) (data key version \(keyFile.version) unchanged)."
                )
            }
        }
    }
}
