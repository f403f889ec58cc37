/// Which of a `.key` file's slots a manager may unwrap its data key with.
public enum KeySlotAccess: Sendable {
    /// The primary KEK; another provider's slot when the primary cannot be used, as the
    /// configuration's ``SlotFallback`` allows. Escrow slots are never used automatically.
    case automatic
    /// Only the slot with this number (0 is the primary): what `dbkey recover --slot N` uses.
    case slot(Int)
    /// Only the escrow slot sealed to this key's public key: what `dbkey recover
    /// --escrow-private-key` uses.
    case escrow(EscrowPrivateKey)
}

/// When an automatic open may use a slot other than the primary.
public enum SlotFallback: Sendable, Hashable {
    /// Only while the primary's KMS is unavailable (an outage, a region down, a timeout): the
    /// default. A KMS that answers *denied*, *disabled* or *not found* is a revocation or a
    /// loss, and the open fails naming the other slots, so that revoking a device's KMS access
    /// keeps its database shut.
    case whenUnavailable
    /// Also when the primary's KMS refuses (denied, disabled, not found): for apps whose
    /// other slots are meant to outlive the primary KEK. It weakens revocation through the
    /// primary to revocation through every slot.
    case whenUnavailableOrRefused
}

/// One wrapped data key and every slot it is under: the `.key`'s current key or its pending one.
struct SlottedKey {
    let primary: KeySlot
    let slots: [KeySlot]
    let version: Int
    let keyCheck: KeyCheck?
    /// The database salt its escrow seals are bound to.
    let salt: [UInt8]?
    /// "current" or "pending", for messages.
    let role: String
}

extension KeyFile {
    var currentKey: SlottedKey {
        SlottedKey(
            primary: primarySlot, slots: slots, version: version, keyCheck: keyCheck, salt: cipher.salt,
            role: "current")
    }

    func pendingKey(_ pending: PendingOperation) -> SlottedKey {
        SlottedKey(
            primary: KeySlot(number: 0, kms: pending.kms, kekId: pending.kekId, encryptedDek: pending.encryptedDek),
            slots: pending.slots, version: pending.version, keyCheck: pending.keyCheck,
            salt: (pending.cipher ?? cipher).salt, role: "pending")
    }
}

extension DBKeyError.Code {
    /// The KMS refused: a revocation or a loss, never retried elsewhere without an opt-in.
    var isKmsRefusal: Bool { self == .kmsAccessDenied || self == .kmsKeyDisabled || self == .kmsKeyNotFound }
}

extension KeyUnlocker {
    /// Unwraps `key` through the slots ``access`` allows, checking the result against the
    /// key check; a slot other than the primary is an audit event.
    ///
    /// An altered wrapped key (`ciphertext-invalid`) or a key that fails the key check is never
    /// skipped over: it is thrown at once.
    func unwrap(_ key: SlottedKey, of keyFile: KeyFile) async throws -> SecureBuffer {
        let (plaintext, slot) = try await unwrapThroughSlots(key, of: keyFile)
        guard plaintext.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .wrongKey, "Slot \(slot.number) gave a \(plaintext.count)-byte key; SQLCipher keys here are 32 bytes.",
                path: keyFilePath, kekId: slot.kekId)
        }
        if let check = key.keyCheck, !check.matches(plaintext) {
            throw DBKeyError(
                .wrongKey,
                "The key slot \(slot.number) (\(slot.kms) \(slot.kekId)) of \(keyFilePath) gave a key that does not match the \(key.role) key check: its wrapped key was replaced by another database's.",
                path: keyFilePath, kekId: slot.kekId
            )
        }
        if slot.number != 0 {
            audit.record(
                AuditEvent(
                    kind: .slotUsed, databasePath: databasePath, provider: slot.kms, kekId: slot.kekId,
                    dekVersion: key.version, detail: "slot \(slot.number) opened the \(key.role) key"))
        }
        return plaintext
    }

    private func unwrapThroughSlots(_ key: SlottedKey, of keyFile: KeyFile) async throws -> (SecureBuffer, KeySlot) {
        let context = keyFile.encryptionContext
        switch access {
        case .escrow(let privateKey):
            let publicKey = privateKey.publicKey
            guard let slot = key.slots.first(where: { $0.escrowPublicKey == publicKey }) else {
                throw DBKeyError(
                    .kmsKeyNotFound,
                    "No escrow slot of \(keyFilePath) is sealed to the escrow key \(publicKey.id) (its slots: \(KeySlot.describe(key.allSlots))).",
                    path: keyFilePath, kekId: publicKey.id)
            }
            guard let salt = key.salt else {
                throw DBKeyError(.keyFileCorrupt, "\(keyFilePath) records no salt, which its escrow slot is bound to.")
            }
            let plaintext = try EscrowSeal.open(
                slot.encryptedDek, with: privateKey, context: context, salt: salt, version: key.version)
            return (plaintext, slot)
        case .slot(let number):
            guard let slot = key.allSlots.first(where: { $0.number == number }) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(keyFilePath) has no slot \(number) for its \(key.role) key (its slots: \(KeySlot.describe(key.allSlots))).",
                    path: keyFilePath)
            }
            guard !slot.isEscrow else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Slot \(number) is an escrow slot: open it with its private key (dbkey recover --escrow-private-key FILE or --recovery-code-stdin).",
                    path: keyFilePath)
            }
            return (try await unwrapKms(slot, context: context), slot)
        case .automatic:
            do {
                return (try await unwrapKms(key.primary, context: context), key.primary)
            } catch let primaryError as DBKeyError {
                let others = key.slots.filter { !$0.isEscrow }
                guard !key.slots.isEmpty else { throw primaryError }
                let allowed =
                    primaryError.code == .kmsUnavailable
                    || (primaryError.code.isKmsRefusal && slotFallback == .whenUnavailableOrRefused)
                guard allowed, !others.isEmpty else {
                    guard primaryError.code == .kmsUnavailable || primaryError.code.isKmsRefusal else {
                        throw primaryError
                    }
                    let why =
                        primaryError.code == .kmsUnavailable
                        ? "no other provider's slot can stand in"
                        : "a refusal is a revocation or a loss, so no other slot is tried (Configuration.slotFallback opts in)"
                    throw primaryError.adding(
                        "The primary KEK failed and \(why); other slots: \(KeySlot.describe(key.slots)). An operator can recover through one: dbkey recover \(databasePath) --slot N | --escrow-private-key FILE --to KEK_URI."
                    )
                }
                var failures: [String] = []
                for slot in others {
                    do {
                        return (try await unwrapKms(slot, context: context), slot)
                    } catch let error as DBKeyError where error.code != .ciphertextInvalid {
                        // Unreachable, refused or not configured here: try the next one.
                        failures.append("slot \(slot.number) \(error.code)")
                    }
                }
                throw primaryError.adding("No other slot could stand in: \(failures.joined(separator: ", ")).")
            }
        }
    }

    /// Unwraps the data key in a provider's slot.
    func unwrapKms(_ slot: KeySlot, context: EncryptionContext) async throws -> SecureBuffer {
        let kms = try provider(named: slot.kms)
        do {
            return try await kms.decrypt(slot.encryptedDek, kekId: slot.kekId, context: context)
        } catch let error as DBKeyError {
            throw error.about(path: keyFilePath, kekId: slot.kekId)
        }
    }
}

extension SlottedKey {
    var allSlots: [KeySlot] { [primary] + slots }
}

extension KeySlot {
    /// "0 (local local:…), 1 (escrow x25519:…)", for messages.
    static func describe(_ slots: [KeySlot]) -> String {
        slots.map { "\($0.number) (\($0.kms) \($0.kekId))" }.joined(separator: ", ")
    }
}
