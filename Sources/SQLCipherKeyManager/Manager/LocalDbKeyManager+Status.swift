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
    /// The KEK version the data key is wrapped under, for services that version their keys
    /// (Vault Transit); `nil` otherwise.
    public let wrappedKeyVersion: Int?

    /// Whether the database opened.
    public var databaseOpens: Bool { openError == nil }

    /// Whether the data key is wrapped under an older version of its KEK than the newest one.
    /// Rewrap it (``LocalDbKeyManager/rewrap(to:kekId:wait:)`` with the same provider and KEK,
    /// `dbkey rewrap DATABASE`) before the old version is retired.
    public var wrappedUnderOlderKeyVersion: Bool {
        guard let wrappedKeyVersion, case .success(let health) = kmsHealth, let latest = health.latestKeyVersion
        else { return false }
        return wrappedKeyVersion < latest
    }
}

extension LocalDbKeyManager {
    /// Reports on the key and the database: the `.key` file's metadata, whether rotation is due,
    /// whether the KMS answers (and how fast), whether the data key is wrapped under the KEK's
    /// newest version, and whether the database opens.
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
            openError: openError,
            wrappedKeyVersion: kms.keyVersion(of: keyFile.encryptedDek)
        )
    }
}
