import Foundation
import Logging

/// Receives the key events an app may want to keep: keys generated, loaded, rotated, rewrapped,
/// databases migrated, interrupted changes recovered, and failed opens.
///
/// DBKey never logs these above `debug` (a library does not decide what an app's logs keep);
/// implement this protocol to send them to your audit trail. No event carries key material.
///
/// ```swift
/// struct AuditTrail: AuditSink {
///     func record(_ event: AuditEvent) {
///         print(event.kind.rawValue, event.databasePath, event.provider ?? "-", event.dekVersion ?? 0)
///     }
/// }
/// let configuration = DatabaseKeyManager.Configuration(auditSink: AuditTrail())
/// ```
public protocol AuditSink: Sendable {
    /// Records one event. Called on the task that caused it: return quickly.
    func record(_ event: AuditEvent)
}

/// One key event.
public struct AuditEvent: Sendable, Hashable {
    /// What happened.
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        /// A new data key and database were created.
        case keyGenerated = "key.generated"
        /// A data key was unwrapped by the KMS (not served from the key cache).
        case keyLoaded = "key.loaded"
        /// The data key was rotated.
        case keyRotated = "key.rotated"
        /// The data key was wrapped under another KEK.
        case keyRewrapped = "key.rewrapped"
        /// An existing database was brought under management.
        case databaseMigrated = "database.migrated"
        /// The database was moved to the SQLCipher 4 format under a new data key.
        case databaseUpgraded = "database.upgraded"
        /// An interrupted key change was completed or undone.
        case keyChangeRecovered = "key-change.recovered"
        /// Opening the database failed.
        case openFailed = "open.failed"
        /// A data key was unwrapped through a slot other than the primary KEK (its provider and
        /// KEK are the event's; the detail says which slot and why).
        case slotUsed = "key.slot-used"
        /// A consistent copy of the database was made with a `.key` of its own.
        case databaseBackedUp = "database.backed-up"
        /// A backup was put in place under a database path.
        case databaseRestored = "database.restored"
        /// A key slot was added.
        case slotAdded = "key.slot-added"
        /// A key slot was removed (or dropped by a rotation that could not reach it).
        case slotRemoved = "key.slot-removed"
        /// An operator recovered the database through a slot or an escrow key, and the primary
        /// KEK was replaced.
        case keyRecovered = "key.recovered"
    }

    /// What happened.
    public let kind: Kind
    /// The database's path.
    public let databasePath: String
    /// The provider of the KEK, when known.
    public let provider: String?
    /// The KEK's id, when known.
    public let kekId: String?
    /// The data key's version, when known.
    public let dekVersion: Int?
    /// More about the event: the error code of a failed open, how a change was recovered.
    public let detail: String?
    /// When it happened.
    public let date: Date

    /// Creates an event.
    public init(
        kind: Kind,
        databasePath: String,
        provider: String?,
        kekId: String?,
        dekVersion: Int?,
        detail: String? = nil,
        date: Date = Date()
    ) {
        self.kind = kind
        self.databasePath = databasePath
        self.provider = provider
        self.kekId = kekId
        self.dekVersion = dekVersion
        self.detail = detail
        self.date = date
    }
}

/// The default sink: each event logged at `debug` with its fields as metadata.
public struct LoggingAuditSink: AuditSink {
    private let logger: Logger

    /// Creates a sink writing to `logger`.
    public init(logger: Logger) {
        self.logger = logger
    }

    public func record(_ event: AuditEvent) {
        var metadata: Logger.Metadata = ["event": "\(event.kind.rawValue)", "database": "\(event.databasePath)"]
        metadata["kms"] = event.provider.map { "\($0)" }
        metadata["kek_id"] = event.kekId.map { "\($0)" }
        metadata["version"] = event.dekVersion.map { "\($0)" }
        metadata["detail"] = event.detail.map { "\($0)" }
        logger.debug("\(event.kind.rawValue)", metadata: metadata)
    }
}
