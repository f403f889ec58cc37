import Foundation

/// What ``LocalDbKeyManager/status(now:)`` found about a managed database.
public struct DatabaseKeyStatus: Sendable {
    /// The database file's path.
    public let databasePath: String
    /// The `.key` file's contents.
    public let keyFile: KeyFile
    /// Whether the key is due for rotation.
    public let rotationDue: Bool
    /// The KMS's health report, or why it could not be had.
    public let kmsHealth: Result<KmsHealth, DBKeyError>
    /// `nil` when the database opened with its key and answered a first read; otherwise why not.
    public let openError: DBKeyError?

    /// Whether the database opened.
    public var databaseOpens: Bool { openError == nil }
}

extension LocalDbKeyManager {
    /// Reports on the key and the database: the `.key` file's metadata, whether rotation is due,
    /// whether the KMS answers (and how fast), and whether the database opens.
    ///
    /// KMS and database failures are reported in the result, not thrown.
    ///
    /// - Throws: ``DBKeyError`` with a key-file code when the `.key` file cannot be read.
    public func status(now: Date = Date()) async throws -> DatabaseKeyStatus {
        // Open first: it finishes an interrupted key change, so the report shows the result.
        var openError: DBKeyError?
        do {
            try await openReportingKeyFile().connection.close()
        } catch let error as DBKeyError {
            openError = error
        }
        let keyFile = try load()
        let health: Result<KmsHealth, DBKeyError>
        do {
            health = .success(try await kms.health(kekId: keyFile.kekId))
        } catch let error as DBKeyError {
            health = .failure(error)
        }
        return DatabaseKeyStatus(
            databasePath: databasePath,
            keyFile: keyFile,
            rotationDue: keyFile.nextRotationDue.map { $0 <= now } ?? false,
            kmsHealth: health,
            openError: openError
        )
    }
}
