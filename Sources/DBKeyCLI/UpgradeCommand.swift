import ArgumentParser
import SQLCipherKeyManager

struct UpgradeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade",
        abstract: "Move a database from the SQLCipher 3 format to the SQLCipher 4 format, under a new data key.",
        discussion: """
            The database is exported into an SQLCipher 4 copy (HMAC-SHA512 pages, SQLCipher 4's \
            default 4096-byte pages unless --page-size says otherwise) under a new data key from \
            the same KEK, verified row for row, and swapped in \
            with one rename; the change is journaled in the .key file, so a crash leaves the old \
            database or the new one with a .key that opens it. Needs SQLCipher 4 linked, every \
            other process closed, and free space for one more copy. Afterwards only SQLCipher 4 \
            opens the database. A database already in the 4 format is left as it is.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @Flag(help: "Keep the first 32 bytes of the new file in plaintext, the salt in the .key (iOS shared containers).")
    var plaintextHeader = false

    @Option(parsing: .unconditional, help: "SQLCipher page size of the upgraded database (1024 to 65536).")
    var pageSize: Int = CipherSettings.newDatabasePageSize

    func validate() throws {
        guard CipherSettings.newDatabasePageSizes.contains(pageSize) else {
            throw ValidationError("--page-size must be a power of two from 1024 to 65536; got \(pageSize).")
        }
    }

    @Flag(help: "Print the result as JSON.")
    var json = false

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let manager = common.existingDatabaseManager(
                database, plaintextHeader: plaintextHeader, logger: common.makeLogger())
            let before = try manager.load()
            let keyFile = try await manager.upgrade(pageSize: pageSize, progress: ProgressLine.reporter())
            ProgressLine.finish()
            let upgraded = keyFile.version != before.version
            Output.warnUnsafeEscrowSlotsLeftOut(before: before, after: keyFile, database: database)
            if json {
                struct Upgraded: Encodable {
                    let database: String
                    let upgraded: Bool
                    let sqlcipherFormat, dekVersion, plaintextHeaderSize: Int
                }
                Output.printJSON(
                    Upgraded(
                        database: database, upgraded: upgraded, sqlcipherFormat: keyFile.cipher.format,
                        dekVersion: keyFile.version, plaintextHeaderSize: keyFile.cipher.plaintextHeaderSize))
            } else if upgraded {
                print("Upgraded \(database) to the SQLCipher 4 format, under key version \(keyFile.version).")
            } else {
                print("\(database) is already in the SQLCipher \(keyFile.cipher.format) format: nothing to do.")
            }
        }
    }
}
