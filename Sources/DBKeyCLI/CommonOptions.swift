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
                struct ErrorOutput: Encodable { let error: ProblemOutput }
                Output.printJSON(ErrorOutput(error: ProblemOutput(error)))
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
    func existingDatabaseManager(_ database: String, plaintextHeader: Bool = false, logger: Logger)
        -> DatabaseKeyManager
    {
        DatabaseKeyManager(
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
    func run(_ body: (DatabaseKeyManager) async throws -> Void) async throws {
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

    /// Prints `value` as JSON: indented, keys sorted and in snake case (`kekId` prints as
    /// `kek_id`). Nothing the tool prints as JSON holds a secret.
    static func printJSON(_ value: some Encodable) {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        print(String(decoding: data, as: UTF8.self))
    }

    /// A date as ISO 8601, or `null`.
    static func timestamp(_ date: Date?) -> OrNull<String> {
        OrNull(date.map { $0.formatted(.iso8601) })
    }
}

/// A value printed as `null` when absent, for keys that are always part of an output's shape.
struct OrNull<Value: Encodable>: Encodable {
    let value: Value?

    init(_ value: Value?) {
        self.value = value
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let value {
            try container.encode(value)
        } else {
            try container.encodeNil()
        }
    }
}

/// An error as `--json` prints it.
struct ProblemOutput: Encodable {
    let code: String
    let message: String

    init(_ error: DBKeyError) {
        code = error.code.rawValue
        message = error.message
    }
}

/// A key slot as `--json` prints it.
struct SlotOutput: Encodable {
    let slot: Int
    /// `kms` or `escrow`, where a listing includes escrow slots.
    var kind: String?
    let kms: String
    let kekId: String

    init(_ slot: KeySlot, withKind: Bool = false) {
        self.slot = slot.number
        kind = withKind ? (slot.isEscrow ? "escrow" : "kms") : nil
        kms = slot.kms
        kekId = slot.kekId
    }
}

/// What a command that changed a key reports under `--json`: the database, its `.key`'s
/// provider, KEK and data key version, and what else the command adds (`Extra`'s keys, printed
/// beside them).
struct KeyOutput<Extra: Encodable>: Encodable {
    let database: String
    let kms: OrNull<String>
    let kekId: String
    let dekVersion: Int
    let extra: Extra

    init(database: String, _ keyFile: KeyFile, _ extra: Extra) {
        self.database = database
        kms = OrNull(keyFile.kms)
        kekId = keyFile.kekId
        dekVersion = keyFile.version
        self.extra = extra
    }

    private enum CodingKeys: String, CodingKey {
        case database, kms, kekId, dekVersion
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(database, forKey: .database)
        try container.encode(kms, forKey: .kms)
        try container.encode(kekId, forKey: .kekId)
        try container.encode(dekVersion, forKey: .dekVersion)
        try extra.encode(to: encoder)
    }
}

/// Nothing beside a ``KeyOutput``'s own keys.
struct NoExtra: Encodable {}
