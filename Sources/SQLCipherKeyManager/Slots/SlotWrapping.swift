import Logging

extension KeyUnlocker {
    /// Wraps `key` under `kekId` of `target` and unwraps it again, so that a misconfigured
    /// target never gets into a `.key` file.
    func wrapChecked(
        _ key: SecureBuffer, by target: any KeyManagementService, kekId: String, context: EncryptionContext
    ) async throws -> WrappedDataKey {
        let wrapped = try await target.encrypt(key, kekId: kekId, context: context)
        try await requireUnwraps(wrapped, to: key, by: target, kekId: kekId, context: context)
        return wrapped
    }

    /// Checks that `target` gives `key` back from `wrapped`.
    func requireUnwraps(
        _ wrapped: WrappedDataKey, to key: SecureBuffer, by target: any KeyManagementService, kekId: String,
        context: EncryptionContext
    ) async throws {
        guard try await target.decrypt(wrapped, kekId: kekId, context: context) == key else {
            throw DBKeyError(
                .ciphertextInvalid,
                "The \(target.providerName) KMS did not give back the key it had just wrapped; \(keyFilePath) was not changed.",
                path: keyFilePath, kekId: kekId
            )
        }
    }

    /// A new data key under every slot in `slots`, each checked, for a key change's pending
    /// record: escrow slots are sealed for `salt` and `version`.
    ///
    /// A slot whose provider fails stops the change before anything is written, unless
    /// `dropUnreachable` leaves it out. An escrow slot whose public key has small order is
    /// always left out: a seal to it would give the new key to anyone holding the `.key`.
    ///
    /// - Returns: The slots holding the new key, and those left out (``KeySlot/isUnsafeEscrow``
    ///   tells the unsafe ones from the unreachable).
    func wrap(
        _ newKey: SecureBuffer, under slots: [KeySlot], context: EncryptionContext, salt: [UInt8]?, version: Int,
        dropUnreachable: Bool
    ) async throws -> (slots: [KeySlot], dropped: [KeySlot]) {
        var wrapped: [KeySlot] = []
        var dropped: [KeySlot] = []
        for slot in slots {
            if slot.isUnsafeEscrow {
                logger.debug(
                    "Escrow slot of small order left out",
                    metadata: ["slot": "\(slot.number)", "kek_id": "\(slot.kekId)"])
                dropped.append(slot)
                continue
            }
            if let publicKey = slot.escrowPublicKey {
                guard let salt else {
                    throw DBKeyError(
                        .keyFileCorrupt,
                        "\(keyFilePath) records no salt, which its escrow slot \(slot.number) is bound to.")
                }
                let sealed = try EscrowSeal.seal(newKey, to: publicKey, context: context, salt: salt, version: version)
                wrapped.append(slot.holding(sealed))
                continue
            }
            do {
                let kms = try provider(named: slot.kms)
                wrapped.append(
                    slot.holding(try await wrapChecked(newKey, by: kms, kekId: slot.kekId, context: context)))
            } catch let error as DBKeyError {
                guard dropUnreachable else {
                    throw error.adding(
                        "Key slot \(slot.number) (\(slot.kms) \(slot.kekId)) could not take the new data key, so nothing was changed: restore its KMS, remove the slot (dbkey slot remove), or leave it out of this change (--drop-unreachable-slots)."
                    ).about(path: keyFilePath, kekId: slot.kekId)
                }
                dropped.append(slot)
            }
        }
        return (wrapped, dropped)
    }
}

extension ManagedDatabase {
    /// One `slot-removed` audit event for each slot of `keyFile` that `changed` no longer has,
    /// saying why: left out by ``wrap(_:under:context:salt:version:dropUnreachable:)`` or
    /// removed by the `change`.
    func recordSlotsLeftOut(of keyFile: KeyFile, by changed: KeyFile, dropped: [KeySlot], change: String) {
        let removed = keyFile.allSlots.filter { old in
            !changed.allSlots.contains { $0.kms == old.kms && $0.kekId == old.kekId }
        }
        for slot in removed {
            let why =
                slot.isUnsafeEscrow
                ? "its escrow public key has small order, so a seal to it would leak the new key"
                : dropped.contains(slot) ? "its provider could not take the new key" : "removed with \(change)"
            audit.record(
                AuditEvent(
                    kind: .slotRemoved, databasePath: databasePath, provider: slot.kms, kekId: slot.kekId,
                    dekVersion: changed.version, detail: "slot \(slot.number): \(why)"))
        }
    }
}

extension KeyFile {
    /// The record without slot `number`. Removing the primary (0) makes the first other
    /// provider's slot the primary.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` when there is no such
    ///   slot, or no provider's slot to take the primary's place.
    func removingSlot(_ number: Int, source: String) throws -> KeyFile {
        var result = self
        if number == 0 {
            guard let promoted = slots.first(where: { !$0.isEscrow }) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Slot 0, the primary KEK, can only be removed when another provider's slot can take its place; \(source) has none (escrow slots cannot: their private key is offline). Rewrap the primary instead (dbkey rewrap --to).",
                    path: source)
            }
            result.kms = promoted.kms
            result.kekId = promoted.kekId
            result.encryptedDek = promoted.encryptedDek
            result.slots.removeAll { $0.number == promoted.number }
            return result
        }
        guard slots.contains(where: { $0.number == number }) else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(source) has no slot \(number) (its slots: \(KeySlot.describe(allSlots))).", path: source)
        }
        result.slots.removeAll { $0.number == number }
        return result
    }
}
