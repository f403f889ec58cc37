import ArgumentParser
import Foundation
import Logging
import SQLCipherKeyManager

/// Options for a new data key, shared by `init` and `migrate`.
struct NewKeyOptions: ParsableArguments {
    @Option(help: "The KEK to wrap the data key under, as a URI.")
    var kek: String = "local://default"

    @Option(name: .customLong("context"), help: "An encryption context pair KEY=VALUE (repeatable). Never a secret.")
    var contextPairs: [String] = []

    @Option(
        name: .customLong("rotation-days"), parsing: .unconditional,
        help: "Days between key rotations (for status and rotate --if-due).")
    var rotationDays: Int?

    @Flag(
        help:
            "Keep the first 32 bytes of the new database in plaintext, the salt in the .key (iOS shared containers; SQLCipher 4)."
    )
    var plaintextHeader = false

    @Flag(
        name: .customLong("allow-sqlcipher3"),
        help:
            "With a SQLCipher 3.x library, create the database in the old 3 format (otherwise refused). Also: DBKEY_ALLOW_SQLCIPHER3_DATABASES=1."
    )
    var allowSQLCipher3 = false

    func validate() throws {
        if let rotationDays, !(1...36_500).contains(rotationDays) {
            throw ValidationError("--rotation-days must be from 1 to 36500.")
        }
    }

    /// A manager for `database` whose new keys follow these options.
    func makeManager(
        database: String,
        common: CommonOptions,
        pageSize: Int = CipherSettings.newDatabasePageSize,
        logger: Logger
    ) throws -> DatabaseKeyManager {
        let target = try common.registry(logger: logger).target(forURI: kek)
        return DatabaseKeyManager(
            databasePath: database,
            providers: common.registry(logger: logger).adding(target.provider),
            configuration: .init(
                kekId: target.kekId,
                kekProvider: target.provider.providerName,
                encryptionContext: try EncryptionContext(parsing: contextPairs),
                rotationPeriodDays: rotationDays,
                pageSize: pageSize,
                plaintextHeader: plaintextHeader,
                allowsSQLCipher3Databases: allowSQLCipher3
                    || ProcessInfo.processInfo.environment[
                        DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable] == "1"
            ),
            logger: logger
        )
    }
}
