import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Bring an existing plaintext or passphrase-keyed database under management.",
        discussion: """
            The database is exported into an encrypted copy under a new data key, verified row \
            for row, and swapped in with one rename; a crash leaves the original or the new one, \
            with a .key that matches. Stop every process using it first. Needs free space for \
            one more copy. SQLite cannot promise the old plaintext bytes are gone from the disk.
            A passphrase is read from an environment variable, a file, or stdin; never from the \
            command line.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @Flag(help: "The database is plaintext SQLite.")
    var fromPlaintext = false

    @Option(help: "The name of an environment variable holding the passphrase.")
    var fromPassphraseEnv: String?

    @Option(help: "A file (mode 0600) holding the passphrase.")
    var fromPassphraseFile: String?

    @Flag(help: "Read the passphrase from standard input.")
    var fromPassphraseStdin = false

    @Option(
        parsing: .unconditional,
        help: "The SQLCipher format of the old database: 4 (SQLCipher 4.x) or 3 (3.x, 2.x, 1.x). Default: 4, then 3.")
    var sqlcipherFormat: Int?

    @Option(parsing: .unconditional, help: "PBKDF2 iterations of the old database (SQLCipher 2.x and 1.x: 4000).")
    var kdfIter: Int?

    @Option(parsing: .unconditional, help: "Page size of the old database (default: the format's, 4096 or 1024).")
    var pageSize: Int?

    @Flag(help: "The old database has no per-page HMAC (SQLCipher 1.x).")
    var noHmac = false

    @OptionGroup var newKey: NewKeyOptions

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        let sources = [fromPlaintext, fromPassphraseEnv != nil, fromPassphraseFile != nil, fromPassphraseStdin]
        guard sources.filter({ $0 }).count == 1 else {
            throw ValidationError(
                "Name exactly one source: --from-plaintext, --from-passphrase-env VAR, --from-passphrase-file PATH or --from-passphrase-stdin."
            )
        }
        if fromPlaintext, kdfIter != nil || pageSize != nil || noHmac || sqlcipherFormat != nil {
            throw ValidationError(
                "--sqlcipher-format, --kdf-iter, --page-size and --no-hmac apply to passphrase databases only.")
        }
        if let sqlcipherFormat, !CipherSettings.formats.contains(sqlcipherFormat) {
            throw ValidationError("--sqlcipher-format must be 3 or 4; got \(sqlcipherFormat).")
        }
        if let kdfIter, !(1...100_000_000).contains(kdfIter) {
            throw ValidationError("--kdf-iter must be from 1 to 100000000; got \(kdfIter).")
        }
        if let pageSize, !CipherSettings.isValidPageSize(pageSize) {
            throw ValidationError("--page-size must be a power of two from 512 to 65536; got \(pageSize).")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            let manager = try newKey.makeManager(database: database, common: common, logger: common.makeLogger())
            let keyFile = try await manager.migrate(from: try source(), progress: ProgressLine.reporter())
            ProgressLine.finish()
            if json {
                Output.printJSON(KeyOutput(database: database, keyFile, NoExtra()))
            } else {
                print(
                    "Migrated \(database): encrypted under a new data key, wrapped under \(keyFile.kms ?? "?") KEK \(keyFile.kekId)."
                )
            }
        }
    }

    private func source() throws -> MigrationSource {
        if fromPlaintext {
            return .plaintext
        }
        let settings = PassphraseCipherSettings(
            format: sqlcipherFormat, kdfIterations: kdfIter, pageSize: pageSize, useHMAC: !noHmac)
        let passphrase: SecureBuffer
        if let variable = fromPassphraseEnv {
            guard let value = ProcessInfo.processInfo.environment[variable], !value.isEmpty else {
                throw DBKeyError(.invalidConfiguration, "The environment variable \(variable) is not set.")
            }
            passphrase = try Passphrase.fromText(value)
        } else if let path = fromPassphraseFile {
            passphrase = try Passphrase.fromFile(path)
        } else {
            passphrase = try Passphrase.fromStandardInput()
        }
        return .passphrase(passphrase, settings)
    }
}
