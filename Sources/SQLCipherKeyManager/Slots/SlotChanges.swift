/// Adding and removing key slots, and recovering through one: each is one atomic `.key` write
/// under the exclusive lock, after any interrupted key change was settled.
struct SlotChanges {
    let database: ManagedDatabase

    /// Adds a slot holding the data key under `kekId` of `target`.
    func add(_ target: any KeyManagementService, kekId: String, wait: Duration) async throws -> KeyFile {
        try await changing(wait: wait) { keyFile, key in
            let resolved = try await target.health(kekId: kekId).kekId
            if let existing = keyFile.allSlots.first(where: { $0.kms == target.providerName && $0.kekId == resolved }) {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Slot \(existing.number) of \(database.keyFilePath) is already under \(target.providerName) \(resolved).",
                    path: database.keyFilePath, kekId: resolved)
            }
            let wrapped = try await database.unlocker.wrapChecked(
                key, by: target, kekId: resolved, context: keyFile.encryptionContext)
            return KeySlot(
                number: keyFile.nextSlotNumber, kms: target.providerName, kekId: resolved, encryptedDek: wrapped)
        }
    }

    /// Adds an escrow slot: the data key sealed to `publicKey`.
    func addEscrow(_ publicKey: EscrowPublicKey, wait: Duration) async throws -> KeyFile {
        try await changing(wait: wait) { keyFile, key in
            if let existing = keyFile.slots.first(where: { $0.escrowPublicKey == publicKey }) {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Slot \(existing.number) of \(database.keyFilePath) is already sealed to the escrow key \(publicKey.id).",
                    path: database.keyFilePath)
            }
            // changing(wait:) recorded the salt the seal is bound to.
            let sealed = try EscrowSeal.seal(
                key, to: publicKey, context: keyFile.encryptionContext, salt: keyFile.cipher.salt ?? [],
                version: keyFile.version)
            return KeySlot(
                number: keyFile.nextSlotNumber, kms: KeySlot.escrowProvider, kekId: publicKey.id,
                encryptedDek: sealed, escrowPublicKey: publicKey)
        }
    }

    /// Removes slot `number` with the data key unchanged, after checking that another
    /// provider's slot still gives the key.
    func remove(_ number: Int, wait: Duration) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        return try await database.changingKey(wait: wait) { keyFile in
            let key = try await database.unlocker.unwrapKey(of: keyFile)
            let result = try keyFile.removingSlot(number, source: database.keyFilePath)
            var working: KeySlot?
            for slot in result.allSlots where !slot.isEscrow {
                if let unwrapped = try? await database.unlocker.unwrapKms(slot, context: keyFile.encryptionContext),
                    unwrapped == key
                {
                    working = slot
                    break
                }
            }
            guard working != nil else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Removing slot \(number) would leave \(database.keyFilePath) without a slot that works now: no other provider's slot gives the data key (escrow slots are not counted, their private key being offline). Nothing was changed.",
                    path: database.keyFilePath)
            }
            let removed = keyFile.allSlots.first { $0.number == number }
            let stored = try await database.keyStore.write(result, sealedWith: key)
            database.audit.record(
                AuditEvent(
                    kind: .slotRemoved, databasePath: database.databasePath, provider: removed?.kms,
                    kekId: removed?.kekId, dekVersion: stored.version, detail: "slot \(number)"))
            return stored
        }
    }

    /// Opens the key through `access` alone (settling an interrupted change with it), proves it
    /// opens the database, and wraps it under `kekId` of `target` as the new primary.
    func recover(
        through access: KeySlotAccess, to target: any KeyManagementService, kekId: String, wait: Duration
    ) async throws -> KeyFile {
        let recovering = database.restricted(to: access)
        try recovering.opener.refuseSymbolicLink()
        return try await recovering.changingKey(wait: wait) { keyFile in
            let key = try await recovering.unlocker.unwrapKey(of: keyFile)
            try await recovering.opener.proveOpens(with: key, keyFile: keyFile)
            let resolved = try await target.health(kekId: kekId).kekId
            var recovered = keyFile
            recovered.kms = target.providerName
            recovered.kekId = resolved
            recovered.encryptedDek = try await recovering.unlocker.wrapChecked(
                key, by: target, kekId: resolved, context: keyFile.encryptionContext)
            // A slot under the new primary's KEK would only repeat it.
            recovered.slots.removeAll { $0.kms == target.providerName && $0.kekId == resolved }
            let stored = try await recovering.keyStore.write(recovered, sealedWith: key)
            let through: String
            switch access {
            case .automatic: through = "the slots an open may use"
            case .slot(let number): through = "slot \(number)"
            case .escrow(let privateKey): through = "the escrow key \(privateKey.publicKey.id)"
            }
            recovering.record(
                .keyRecovered, stored,
                detail: "through \(through); the primary was \(keyFile.kms ?? "?") \(keyFile.kekId)")
            return stored
        }
    }

    /// Runs a slot addition: under the exclusive lock, with the key proven to open the
    /// database and the salt recorded, stores the record with the slot `makeSlot` returns.
    private func changing(
        wait: Duration, _ makeSlot: (KeyFile, SecureBuffer) async throws -> KeySlot
    ) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        return try await database.changingKey(wait: wait) { keyFile in
            guard keyFile.slots.count < KeySlot.maximumAdditionalSlots else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\(database.keyFilePath) already has \(KeySlot.maximumAdditionalSlots) slots besides its primary KEK, the most a .key file holds. Remove one first (dbkey slot remove).",
                    path: database.keyFilePath)
            }
            let key = try await database.unlocker.unwrapKey(of: keyFile)
            try await database.opener.proveOpens(with: key, keyFile: keyFile)
            var updated = keyFile
            if updated.cipher.salt == nil {
                // Older files record no salt; the database's own is what escrow seals bind to.
                updated.cipher.salt = try database.files.readSalt()
            }
            let slot = try await makeSlot(updated, key)
            updated.slots.append(slot)
            let stored = try await database.keyStore.write(updated, sealedWith: key)
            database.audit.record(
                AuditEvent(
                    kind: .slotAdded, databasePath: database.databasePath, provider: slot.kms, kekId: slot.kekId,
                    dekVersion: stored.version, detail: "slot \(slot.number)"))
            return stored
        }
    }
}
