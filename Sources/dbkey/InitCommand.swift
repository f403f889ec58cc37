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

    @Option(help: "The KEK to wrap the data key under, as a URI.")
    var kek: String = "local://default"

    @Option(name: .customLong("context"), help: "An encryption context pair KEY=VALUE (repeatable). Never a secret.")
    var contextPairs: [String] = []

    @Option(name: .customLong("rotation-days"), help: "Days between key rotations (for status and rotate --if-due).")
    var rotationDays: Int?

    @Option(help: "SQLCipher page size of the new database.")
    var pageSize: Int = CipherSettings.newDatabasePageSize

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        if let rotationDays, !(1...36_500).contains(rotationDays) {
            throw ValidationError("--rotation-days must be from 1 to 36500.")
        }
        guard CipherSettings.isValidPageSize(pageSize) else {
            throw ValidationError("--page-size must be a power of two from 512 to 65536.")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let logger = common.makeLogger()
            let kek = try KekURI(kek)
            let manager = LocalDbKeyManager(
                databasePath: database,
                kms: try kek.makeProvider(logger: logger),
                configuration: .init(
                    kekId: kek.providerKekId,
                    encryptionContext: try EncryptionContext(parsing: contextPairs),
                    rotationPeriodDays: rotationDays,
                    pageSize: pageSize
                ),
                logger: logger
            )
            let keyFile = try await manager.initialize()
            if json {
                Output.printJSON([
                    "database": database,
                    "key_file": manager.keyFilePath,
                    "kms": keyFile.kms,
                    "kek_id": keyFile.kekId,
                    "dek_version": keyFile.version,
                ])
            } else {
                print("Created \(database), encrypted with a new data key (version \(keyFile.version)).")
                print("Key file: \(manager.keyFilePath) (wrapped under \(keyFile.kms) KEK \(keyFile.kekId)).")
            }
        }
    }
}
