import Foundation

/// What ``DatabaseKeyManager/status(now:)`` found about a managed database.
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
    /// (``KeyManagementService/kekVersion(of:)``); `nil` otherwise.
    public let wrappedKekVersion: String?

    /// The SQLCipher linked into this process.
    public let engine: SQLCipherEngine

    /// Whether the database opened.
    public var databaseOpens: Bool { openError == nil }

    /// Whether the database is in the SQLCipher 3 format while the linked SQLCipher writes the
    /// 4 format: ``DatabaseKeyManager/upgrade(pageSize:progress:)`` (`dbkey upgrade`) would move it.
    public var upgradeAvailable: Bool {
        keyFile.cipher.format < engine.newDatabaseFormat
    }

    /// Whether the data key is wrapped under another version of its KEK than the newest one
    /// (``KmsHealth/isOutdated(_:)``). Rewrap it (``DatabaseKeyManager/rewrap(to:kekId:slot:wait:)``
    /// with the same provider and KEK, `dbkey rewrap DATABASE`) before the old version is retired.
    public var wrappedUnderOlderKeyVersion: Bool {
        guard case .success(let health) = kmsHealth else { return false }
        return health.isOutdated(wrappedKekVersion)
    }
}

/// The status report (see ``DatabaseKeyManager/status(now:)``).
struct StatusCheck {
    let database: ManagedDatabase

    func run(now: Date) async throws -> DatabaseKeyStatus {
        // Open first: it finishes an interrupted key change, so the report shows the result.
        var openError: DBKeyError?
        do {
            try await database.openReportingKeyFile().connection.close()
        } catch let error as DBKeyError {
            openError = error
        }
        let keyFile = try database.keyStore.read()
        let kms = try database.unlocker.provider(named: keyFile.kms)
        let health: Result<KmsHealth, DBKeyError>
        do {
            health = .success(try await kms.health(kekId: keyFile.kekId))
        } catch let error as DBKeyError {
            health = .failure(error)
        }
        return DatabaseKeyStatus(
            databasePath: database.databasePath,
            keyFile: keyFile,
            rotationDue: keyFile.nextRotationDue.map { $0 <= now } ?? false,
            kmsHealth: health,
            openError: openError,
            wrappedKekVersion: kms.kekVersion(of: keyFile.encryptedDek),
            engine: try SQLCipherEngine.linked()
        )
    }
}
