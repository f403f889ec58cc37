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

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        guard CipherSettings.newDatabasePageSizes.contains(pageSize) else {
            throw ValidationError("--page-size must be a power of two from 1024 to 65536; got \(pageSize).")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let manager = try newKey.makeManager(
                database: database, common: common, pageSize: pageSize, logger: common.makeLogger())
            let keyFile = try await manager.initialize()
            if json {
                Output.printJSON([
                    "database": database,
                    "key_file": manager.keyFilePath,
                    "kms": keyFile.kms ?? NSNull(),
                    "kek_id": keyFile.kekId,
                    "dek_version": keyFile.version,
                ])
            } else {
                print("Created \(database), encrypted with a new data key (version \(keyFile.version)).")
                print("Key file: \(manager.keyFilePath) (wrapped under \(keyFile.kms ?? "?") KEK \(keyFile.kekId)).")
            }
        }
    }
}
