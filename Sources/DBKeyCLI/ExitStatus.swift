import ArgumentParser
import Foundation
import SQLCipherKeyManager

/// The exit status `dbkey` uses for each class of failure, so that scripts can tell them apart.
enum ExitStatus {
    static let table: [(code: DBKeyError.Code, status: Int32)] = [
        (.wrongKey, 10),
        (.databaseDamaged, 11),
        (.databaseNotFound, 12),
        (.alreadyInitialized, 13),
        (.keyFileMissing, 14),
        (.keyFileCorrupt, 15),
        (.keyFileInsecure, 16),
        (.kmsUnavailable, 20),
        (.kmsAccessDenied, 21),
        (.kmsKeyNotFound, 22),
        (.kmsKeyDisabled, 23),
        (.ciphertextInvalid, 24),
        (.databaseInUse, 30),
        (.rotationInterrupted, 31),
        (.unsupportedFormat, 32),
        (.keyChangePending, 33),
        (.sqlite, 40),
        (.io, 41),
        (.invalidConfiguration, 42),
    ]

    /// The status for an error code; 1 for codes added after this table.
    static func status(for code: DBKeyError.Code) -> Int32 {
        table.first { $0.code == code }?.status ?? 1
    }

    static var helpTable: String {
        (["  0   success", "  1   any other failure", "  64  invalid arguments"]
            + table.map { "  \(String($0.status).padding(toLength: 3, withPad: " ", startingAt: 0)) \($0.code)" })
            .joined(separator: "\n")
    }
}
