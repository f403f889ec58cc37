import Foundation
import ArgumentParser
import SQLCipherKeyManager

struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create an encrypted database and its .key file with a new data key from the KMS."
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file to create.")
    var database: String

    @OptionGroup var newKey: NewKeyOptions

    @Option(parsing: .unconditional, help: "SQLCipher page size of the new database (1024 to 65536).")
    var pageSize: Int = CipherSettings.newDatabasePageSize

    @Option(name: .customLong("slot-kek"), help: "A further KEK to keep the data key under, as a URI (repeatable).")
    var slotKeks: [String] = []

    @Option(help: "An escrow public key file to seal the data key to (PEM, from dbkey escrow keygen).")
    var escrowPublicKey: String?

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard CipherSettings.newDatabasePageSizes.contains(pageSize) else {
            throw ValidationError("--page-size must be a power of two from 1024 to 65536; got \(pageSize).")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let manager = try newKey.makeManager(
                database: database, common: common, pageSize: pageSize, logger: logger)
            // Read and resolved before anything is created, so that a bad one creates nothing.
            let escrowKey = try escrowPublicKey.map { try EscrowPublicKey(pemFile: $0) }
            let slotTargets = try slotKeks.map { try common.registry(logger: logger).target(forURI: $0) }
            var keyFile = try await manager.initialize()
            for target in slotTargets {
                keyFile = try await manager.addSlot(target.provider, kekId: target.kekId)
            }
            if let escrowKey {
                keyFile = try await manager.addEscrowSlot(escrowKey)
            }
            if json {
                struct Created: Encodable {
                    let keyFile: String
                    let slots: [SlotOutput]
                }
                Output.printJSON(
                    KeyOutput(
                        database: database, keyFile,
                        Created(keyFile: manager.keyFilePath, slots: keyFile.slots.map { SlotOutput($0) })))
            } else {
                print("Created \(database), encrypted with a new data key (version \(keyFile.version)).")
                print("Key file: \(manager.keyFilePath) (wrapped under \(keyFile.kms ?? "?") KEK \(keyFile.kekId)).")
            }
        }
    }
}
