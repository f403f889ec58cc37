import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Copy a database, consistently and while it is in use, with a .key of its own.",
        discussion: """
            The copy is one snapshot (sqlcipher_export in a read transaction, under the shared \
            lock: the app keeps running), checked row for row and flushed before it is placed at \
            DEST, with DEST.key beside it. Nothing is replaced; a failure leaves nothing at DEST.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @Argument(help: "The backup's database path; its .key is written beside it.")
    var destination: String

    @Option(help: "Wrap the backup's data key under this KEK only (a backup KEK), as a URI.")
    var to: String?

    @Option(help: "Keep the primary KEK and seal the data key to this escrow public key, no other slot.")
    var escrowPublicKey: String?

    @Flag(help: "Encrypt the backup under a new data key, so that it does not share the live key.")
    var newDek = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard to == nil || escrowPublicKey == nil else {
            throw ValidationError("Name at most one of --to URI and --escrow-public-key FILE.")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let protection: BackupKeyProtection
            if let to {
                let target = try common.registry(logger: logger).target(forURI: to)
                protection = .kek(target.provider, kekId: target.kekId)
            } else if let escrowPublicKey {
                protection = .escrow(try EscrowPublicKey(pemFile: escrowPublicKey))
            } else {
                protection = .sameAsDatabase
            }
            let keyFile = try await common.existingDatabaseManager(database, logger: logger).backup(
                to: destination, protection: protection, newDataKey: newDek, progress: ProgressLine.reporter())
            ProgressLine.finish()
            if json {
                struct Made: Encodable {
                    let backup, keyFile: String
                    let newDek: Bool
                }
                Output.printJSON(
                    KeyOutput(
                        database: database, keyFile,
                        Made(backup: destination, keyFile: KeyFile.path(forDatabase: destination), newDek: newDek)))
            } else {
                print(
                    "Backed up \(database) to \(destination) (key under \(keyFile.kms ?? "?") \(keyFile.kekId)\(newDek ? ", a new data key" : ""))."
                )
            }
        }
    }
}

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Put a backup and its .key in place, after checking that they open together.",
        discussion: """
            The backup's key check, salt and every page are checked where it lies; then the \
            database and its .key are placed at DB, never over an existing file. --to re-homes \
            the copy under a new device's KEK. A backup sealed to an escrow key is restored with \
            its private key.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The backup's database path (its .key beside it).")
    var backup: String

    @Argument(help: "Where to restore it.")
    var database: String

    @Option(help: "Wrap the restored data key under this KEK as the primary, as a URI.")
    var to: String?

    @OptionGroup var through: SlotAccessOptions

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let access = try through.access()
            let target = try to.map { try common.registry(logger: logger).target(forURI: $0) }
            let keyFile = try await common.existingDatabaseManager(database, logger: logger).restore(
                from: backup, through: access, rewrapTo: target?.provider, kekId: target?.kekId)
            if json {
                struct Restored: Encodable { let backup: String }
                Output.printJSON(KeyOutput(database: database, keyFile, Restored(backup: backup)))
            } else {
                print("Restored \(backup) to \(database) (key under \(keyFile.kms ?? "?") \(keyFile.kekId)).")
            }
        }
    }
}
