import ArgumentParser
import Foundation
import Logging
import SQLCipherKeyManager

/// Options every subcommand takes.
struct CommonOptions: ParsableArguments {
    @Option(help: "Log level on stderr: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .warning

    /// A logger writing to stderr at the chosen level. Only the executable configures logging.
    func makeLogger() -> Logger {
        var logger = Logger(label: "dbkey") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = logLevel
        return logger
    }

    /// Runs `body`, turning a ``DBKeyError`` into a message on stderr and its exit status.
    func reportingErrors(json: Bool, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as DBKeyError {
            if json {
                Output.printJSON(["error": ["code": error.code.rawValue, "message": error.message]])
            }
            Output.printError(error.message)
            throw ExitCode(ExitStatus.status(for: error.code))
        }
    }

    /// The providers this build of dbkey has, configured from the environment.
    func registry(logger: Logger) -> KmsRegistry {
        KmsRegistry(factories: DBKeyCommand.providers, logger: logger)
    }

    /// A manager for an existing database, with every provider of this build.
    func existingDatabaseManager(_ database: String, plaintextHeader: Bool = false, logger: Logger) -> LocalDbKeyManager
    {
        LocalDbKeyManager(
            databasePath: database, providers: registry(logger: logger),
            configuration: .init(plaintextHeader: plaintextHeader), logger: logger)
    }
}

/// What a command on one existing database takes: the common options, the database, and
/// `--json`.
struct DatabaseOptions: ParsableArguments {
    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file.")
    var database: String

    @Flag(help: "Print the result as JSON.")
    var json = false

    /// Runs `body` with a manager for the database (every provider of this build), turning a
    /// ``DBKeyError`` into a message on stderr and its exit status.
    func run(_ body: (LocalDbKeyManager) async throws -> Void) async throws {
        try await common.reportingErrors(json: json) {
            try await body(common.existingDatabaseManager(database, logger: common.makeLogger()))
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

enum Output {
    static func printError(_ message: String) {
        // The throwing form: the older write(_:) traps when stderr cannot be written (a full
        // disk under a redirect), and a failed report must not turn into a crash.
        try? FileHandle.standardError.write(contentsOf: Data("dbkey: error: \(message)\n".utf8))
    }

    /// A line for the person at the terminal, on standard error, that is neither a warning nor
    /// an error.
    static func printNote(_ message: String) {
        try? FileHandle.standardError.write(contentsOf: Data("dbkey: \(message)\n".utf8))
    }

    static func printWarning(_ message: String) {
        try? FileHandle.standardError.write(contentsOf: Data("dbkey: warning: \(message)\n".utf8))
    }

    /// The escrow slots of small order that a key change left out of the new generation
    /// (`before` is the `.key` read before the change; `removing`, a slot the change removes).
    static func warnUnsafeEscrowSlotsLeftOut(
        before: KeyFile?, after: KeyFile, database: String, removing: Int? = nil
    ) {
        for slot in before?.slots ?? []
        where slot.isUnsafeEscrow && slot.number != removing
            && !after.slots.contains(where: { $0.number == slot.number })
        {
            printWarning(
                "escrow slot \(slot.number) (\(slot.kekId)) was sealed to a public key of small order, which exposes the data key to anyone holding the .key; the new data key was not sealed to it and the slot is gone. Add a new escrow key (dbkey escrow keygen FILE; dbkey slot add \(database) --escrow-public-key FILE.pub), and remake backups made with the old slot."
            )
        }
    }

    static func printJSON(_ value: Any) {
        let data =
            (try? JSONSerialization.data(
                withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]))
            ?? Data("{}".utf8)
        print(String(decoding: data, as: UTF8.self))
    }

    static func timestamp(_ date: Date?) -> Any {
        date.map { $0.formatted(.iso8601) } ?? NSNull()
    }
}
