/// KEK rotation and provider moves: the same data key wrapped under another KEK, one atomic
/// `.key` write (see ``DatabaseKeyManager/rewrap(to:kekId:slot:wait:)``).
struct Rewrap {
    let database: ManagedDatabase

    func run(to target: any KeyManagementService, kekId: String, slot number: Int, wait: Duration) async throws
        -> KeyFile
    {
        if number == 0, let reason = target.primaryRefusal(kekId: kekId) {
            throw DBKeyError(.invalidConfiguration, "\(kekId) cannot be the primary KEK: \(reason)")
        }
        // Shared: connections may stay open, but no rotation may rewrite the .key meanwhile;
        // and one rewrap at a time, each changing the .key as the one before left it.
        try database.opener.refuseSymbolicLink()
        let (lock, _) = try await database.acquireSettled(wait: wait)
        defer { lock.release() }
        let writer = try await DatabaseLock.acquireKeyWriter(databasePath: database.databasePath, wait: wait)
        defer { writer.release() }
        let keyFile = try database.keyStore.read()
        guard let slot = keyFile.allSlots.first(where: { $0.number == number }), !slot.isEscrow else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(database.keyFilePath) has no provider's slot \(number) to rewrap (its slots: \(KeySlot.describe(keyFile.allSlots))); an escrow slot is replaced by removing it and adding the new escrow key.",
                path: database.keyFilePath)
        }
        let key = try await database.unlocker.unwrapKey(of: keyFile)
        let context = keyFile.encryptionContext
        let resolvedKekId = try await target.health(kekId: kekId).kekId
        let wrapped: WrappedDataKey
        if let service = target as? any ServerSideRewrapping, slot.kms == target.providerName,
            let moved = try await service.serverSideRewrap(
                slot.encryptedDek, from: slot.kekId, to: resolvedKekId, context: context)
        {
            // Inside one service (AWS ReEncrypt, Vault rewrap) the plaintext never leaves it.
            wrapped = moved
            try await database.unlocker.requireUnwraps(
                wrapped, to: key, by: target, kekId: resolvedKekId, context: context)
        } else {
            wrapped = try await database.unlocker.wrapChecked(key, by: target, kekId: resolvedKekId, context: context)
        }
        var rewrapped = keyFile
        if number == 0 {
            rewrapped.kms = target.providerName
            rewrapped.kekId = resolvedKekId
            rewrapped.encryptedDek = wrapped
        } else if let index = rewrapped.slots.firstIndex(where: { $0.number == number }) {
            rewrapped.slots[index].kms = target.providerName
            rewrapped.slots[index].kekId = resolvedKekId
            rewrapped.slots[index].encryptedDek = wrapped
        }
        try database.reach(.writingFinalKeyFile)
        rewrapped = try await database.keyStore.write(rewrapped, sealedWith: key)
        database.record(
            .keyRewrapped, rewrapped, detail: "slot \(number) from \(slot.kms) KEK \(slot.kekId) to \(resolvedKekId)")
        return rewrapped
    }
}
