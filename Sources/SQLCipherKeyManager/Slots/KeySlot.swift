/// One more way to the database's data key, kept in the `.key` file beside the primary KEK: the
/// same data key wrapped under another provider's KEK, or sealed to an escrow public key.
///
/// The primary KEK (the `.key`'s `kms`, `kek_id` and `encrypted_dek`) is slot 0; additional
/// slots are numbered from 1 and keep their number for as long as they exist. The file's MAC
/// covers every slot, and a rotation re-wraps the new data key under each of them in the same
/// journaled change (see <doc:KeySlotsAndRecovery>).
public struct KeySlot: Sendable, Hashable {
    /// The `kms` of an escrow slot: no provider, an HPKE seal to ``escrowPublicKey``.
    public static let escrowProvider = "escrow"
    /// The most additional slots a `.key` file may hold (eight with the primary): with a
    /// key change pending, which carries every slot twice, such a file stays far under
    /// the 64 KiB a `.key` may have with the longest ids the package's providers write.
    public static let maximumAdditionalSlots = 7

    /// The slot's number: 1 and up (0 is the primary).
    public package(set) var number: Int
    /// The provider holding the KEK, or ``escrowProvider``.
    public package(set) var kms: String
    /// The KEK the data key is wrapped under; for an escrow slot, the public key's id
    /// (``EscrowPublicKey/id``).
    public package(set) var kekId: String
    /// The wrapped data key; for an escrow slot, base64 of the HPKE encapsulated key (32
    /// bytes) followed by the sealed data key (48 bytes).
    public package(set) var encryptedDek: WrappedDataKey
    /// The escrow public key (an X25519 key), for an escrow slot; `nil` otherwise.
    public package(set) var escrowPublicKey: EscrowPublicKey?
    /// Fields this version does not know, kept as they were.
    var unknownFields: [String: JSONValue] = [:]

    /// Creates a slot.
    package init(
        number: Int, kms: String, kekId: String, encryptedDek: WrappedDataKey, escrowPublicKey: EscrowPublicKey? = nil
    ) {
        self.number = number
        self.kms = kms
        self.kekId = kekId
        self.encryptedDek = encryptedDek
        self.escrowPublicKey = escrowPublicKey
    }

    /// Whether the slot is sealed to an escrow key rather than wrapped by a provider.
    public var isEscrow: Bool { kms == KeySlot.escrowProvider }

    /// Whether the slot is sealed to an escrow public key of small order
    /// (``EscrowPublicKey/hasSmallOrder``): its seal can be opened by anyone holding the `.key`.
    /// DBKey never makes one; a file that holds one still opens, `doctor` reports it, and the next
    /// key change leaves it out.
    public var isUnsafeEscrow: Bool { escrowPublicKey?.hasSmallOrder ?? false }

    /// The slot with another wrapped key: the same slot for a new data key.
    func holding(_ wrapped: WrappedDataKey) -> KeySlot {
        var slot = self
        slot.encryptedDek = wrapped
        return slot
    }
}

extension KeyFile {
    /// The primary KEK as a slot (number 0), for code that treats every slot alike.
    var primarySlot: KeySlot {
        KeySlot(number: 0, kms: kms ?? "", kekId: kekId, encryptedDek: encryptedDek)
    }

    /// The primary and every additional slot, in order.
    public var allSlots: [KeySlot] { [primarySlot] + slots }

    /// The number a new slot gets: one more than the highest in use, now or in a pending record.
    var nextSlotNumber: Int {
        ((slots + (pending?.slots ?? [])).map(\.number).max() ?? 0) + 1
    }

    /// The lowest `format` that can hold this record: slots came with format 4.
    var requiredFormat: Int {
        slots.isEmpty && (pending?.slots.isEmpty ?? true) ? KeyFile.cipherFieldsFormat : KeyFile.slotsFormat
    }
}

extension KeySlot {
    /// The `slots` array, or `nil` (no field) when there are none.
    static func jsonValue(_ slots: [KeySlot]) -> JSONValue? {
        guard !slots.isEmpty else { return nil }
        return .array(
            slots.map { slot in
                var object = slot.unknownFields
                object["slot"] = .integer(Int64(slot.number))
                object["kms"] = .string(slot.kms)
                object["kek_id"] = .string(slot.kekId)
                object["encrypted_dek"] = .string(slot.encryptedDek.encoded)
                object["public_key"] = slot.escrowPublicKey.map { .string(Base64.encode($0.rawRepresentation)) }
                return .object(object)
            })
    }
}
