import Foundation

/// The contents of a database's `.key` file: its data key wrapped under a KEK, and what is
/// needed to use it.
///
/// The file sits next to the database (`app.db` → `app.db.key`), is JSON with mode 0600, and is
/// only ever replaced atomically. Files in the older seven-field form (no `format` field) load;
/// fields this version does not know are kept when the file is rewritten.
public struct KeyFile: Sendable, Hashable {
    /// The newest `format` this version reads and writes: a file is written in the lowest
    /// format that holds it (3, or 4 when it has key slots), so that older versions still read
    /// every file they could use.
    package static let currentFormat = 4
    /// The first format whose `cipher` may record the SQLCipher format, algorithms and
    /// plaintext header (and its MAC covers them); DBKey versions before it refuse the file
    /// instead of opening the database with the wrong settings.
    static let cipherFieldsFormat = 3
    /// The first format with key slots (`slots`, and `pending.slots`), which its MAC covers.
    static let slotsFormat = 4
    /// The largest `.key` file DBKey reads.
    package static let maximumSize = 64 * 1024
    /// The deepest nesting of objects and arrays a `.key` file may have: the file is an object
    /// holding small objects, and fields a newer version adds get room for two more levels.
    package static let maximumNesting = 4
    /// The only data key kind: 256-bit AES.
    package static let dekSpecAES256 = "AES_256"

    /// The schema of the file; `nil` for the older seven-field form.
    public package(set) var format: Int?
    /// The id of the provider holding the KEK (`local`, `aws`, `vault`, `pkcs11`, `mock`, or a
    /// third party's); `nil` only in the older seven-field form, whose provider is the one in
    /// the ``KmsRegistry`` that claims its `kek_id`.
    public package(set) var kms: String?
    /// The KEK the data key is wrapped under, as the provider resolved it.
    public package(set) var kekId: String
    /// The wrapped data key.
    public package(set) var encryptedDek: WrappedDataKey
    /// The data key's generation: 1 at creation, one more at each rotation.
    public package(set) var version: Int
    /// When the database was put under management.
    public package(set) var createdAt: Date
    /// When the data key was last rotated, or `nil` if never.
    public package(set) var rotatedAt: Date?
    /// The context bound to the wrapped key.
    public package(set) var encryptionContext: EncryptionContext
    /// The data key kind: always `AES_256`.
    package var dekSpec: String
    /// A check value telling whether an unwrapped key is this file's key; `nil` in older files.
    package var keyCheck: KeyCheck?
    /// Days between rotations, for ``DatabaseKeyManager/needsRotation(now:)``; `nil` for never.
    public package(set) var rotationPeriodDays: Int?
    /// The SQLCipher settings applied on every open.
    public package(set) var cipher: CipherSettings
    /// A half-done key change, recorded before it touches the database; `nil` normally.
    package var pending: PendingOperation?
    /// The kind of key change the file records as under way (the next open finishes or undoes
    /// it); `nil` normally.
    public var pendingChange: KeyChangeKind? { pending?.operation }
    /// The data key under further KEKs or sealed to escrow keys, beside the primary one (see
    /// ``KeySlot``); empty in most files.
    public package(set) var slots: [KeySlot]

    /// HMAC-SHA256 under the data key over every known field (see `KeyFile+Seal.swift`);
    /// `nil` in files written before it existed.
    var mac: [UInt8]?
    /// Top-level fields this version does not know, kept as they were.
    var unknownFields: [String: JSONValue]
    /// Fields inside `cipher` this version does not know, kept as they were.
    var unknownCipherFields: [String: JSONValue]

    /// Creates the record for a new data key in the current format.
    package init(
        kms: String,
        kekId: String,
        encryptedDek: WrappedDataKey,
        createdAt: Date,
        encryptionContext: EncryptionContext,
        keyCheck: KeyCheck,
        rotationPeriodDays: Int?,
        cipher: CipherSettings
    ) {
        self.format = KeyFile.cipherFieldsFormat
        self.kms = kms
        self.kekId = kekId
        self.encryptedDek = encryptedDek
        self.version = 1
        self.createdAt = createdAt
        self.rotatedAt = nil
        self.encryptionContext = encryptionContext
        self.dekSpec = KeyFile.dekSpecAES256
        self.keyCheck = keyCheck
        self.rotationPeriodDays = rotationPeriodDays
        self.cipher = cipher
        self.pending = nil
        self.slots = []
        self.mac = nil
        self.unknownFields = [:]
        self.unknownCipherFields = [:]
    }

    /// The `.key` path of a database: its full path plus `.key`.
    public static func path(forDatabase databasePath: String) -> String {
        DatabaseFiles(databasePath).keyFile
    }

    /// The date the next rotation is due, or `nil` when no rotation period is set.
    public var nextRotationDue: Date? {
        rotationPeriodDays.map { (rotatedAt ?? createdAt).addingTimeInterval(TimeInterval($0) * 86_400) }
    }
}

/// A half-done key change, written to the `.key` file before the database is touched so that
/// an interrupted change can be finished or undone on the next open.
package struct PendingOperation: Sendable, Hashable {
    /// What is in progress.
    package var operation: KeyChangeKind
    /// The new data key, wrapped.
    package var encryptedDek: WrappedDataKey
    /// The KEK the new data key is wrapped under.
    package var kekId: String
    /// The provider of that KEK.
    package var kms: String
    /// The version the new key will have.
    package var version: Int
    /// The new key's check value.
    package var keyCheck: KeyCheck
    /// When the change began.
    package var startedAt: Date
    /// The database's cipher settings once the change is done, when it changes them (an
    /// upgrade to the SQLCipher 4 format); `nil` when they stay.
    package var cipher: CipherSettings?
    /// The new data key under every additional slot of the record once the change is done.
    package var slots: [KeySlot] = []
    /// The re-encrypted copy a rotation by copy swaps in for the database; `nil` for other
    /// changes.
    package var copy: RotationCopy?
    /// Fields this version does not know, kept as they were.
    var unknownFields: [String: JSONValue] = [:]
    /// Fields inside `cipher` this version does not know, kept as they were.
    var unknownCipherFields: [String: JSONValue] = [:]

    /// Creates a pending record.
    package init(
        operation: KeyChangeKind,
        encryptedDek: WrappedDataKey,
        kekId: String,
        kms: String,
        version: Int,
        keyCheck: KeyCheck,
        startedAt: Date,
        cipher: CipherSettings? = nil
    ) {
        self.cipher = cipher
        self.operation = operation
        self.encryptedDek = encryptedDek
        self.kekId = kekId
        self.kms = kms
        self.version = version
        self.keyCheck = keyCheck
        self.startedAt = startedAt
    }
}

/// The re-encrypted copy of a database that a rotation swaps in (the pending record's `copy`),
/// recorded so that an interrupted rotation can tell a complete copy from a partial one.
package struct RotationCopy: Sendable, Hashable {
    /// The copy's file name, in the database's directory.
    package var name: String
    /// Its size in bytes: the database's.
    package var size: Int64
    /// SHA-256 over the SHA-256 of each chunk's page HMACs (see `PageReencryption`).
    package var checksum: [UInt8]

    /// Creates a record.
    package init(name: String, size: Int64, checksum: [UInt8]) {
        self.name = name
        self.size = size
        self.checksum = checksum
    }
}

/// The key changes the journal records in a `.key` file's `pending` field.
public enum KeyChangeKind: String, Sendable, Hashable, CaseIterable {
    /// A new data key, every page re-encrypted in place (`PRAGMA rekey`): `rotate --in-place`.
    case rotate
    /// A new data key, every page re-encrypted into a copy that is renamed over the database:
    /// the default rotation. Its record carries the copy's name, size and checksum.
    case rotateByCopy = "rotate-copy"
    /// An existing database brought under management: an encrypted copy swapped in.
    case migrate
    /// A managed database moved to the SQLCipher 4 format: a copy under a new data key,
    /// swapped in.
    case upgrade
}
