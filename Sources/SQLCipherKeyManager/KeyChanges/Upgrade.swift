import Foundation

/// Moving a managed database from the SQLCipher 3 format to the SQLCipher 4 format, under a new
/// data key: a copy made with `sqlcipher_export`, verified, flushed, journaled and swapped in,
/// as a migration's is (see ``DatabaseKeyManager/upgrade(pageSize:progress:)``).
///
/// `PRAGMA cipher_migrate` is not used: it refuses raw-key databases with custom settings, such
/// as DBKey's 4096-byte pages.
struct Upgrade {
    let database: ManagedDatabase
    /// The upgraded database's page size.
    var pageSize = CipherSettings.newDatabasePageSize

    func run(progress: (@Sendable (KeyChangeProgress) -> Void)?) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        return try await database.changingKey(wait: .zero) { keyFile in try await upgrade(keyFile, progress: progress) }
    }

    private func upgrade(_ keyFile: KeyFile, progress: (@Sendable (KeyChangeProgress) -> Void)?) async throws
        -> KeyFile
    {
        let journal = database.journal
        let engine = try SQLCipherEngine.linked()
        guard engine.newDatabaseFormat >= 4 else {
            throw DBKeyError(
                .unsupportedFormat,
                "Upgrading to the SQLCipher 4 format needs SQLCipher 4; the linked SQLCipher is \(engine.version) (see \"SQLCipher Versions\" in DBKey's documentation). Nothing was changed.",
                path: database.databasePath)
        }
        guard keyFile.cipher.format < 4 else { return keyFile }
        let currentKey = try await database.unlocker.unwrapKey(of: keyFile)
        let copy = EncryptedCopy(database: database)
        // A copy no pending record names is what a crash before the journal leaves: start again.
        copy.remove()
        let rowCounts = try await BlockingExecutor.shared.run(.long) { [database] in
            let original = try database.opener.openConnection(key: currentKey, keyFile: keyFile)
            defer { original.close() }
            try copy.checkpointForSwap(original)
            return try original.tableRowCounts()
        }
        let kms = try database.unlocker.provider(named: keyFile.kms)
        let newKey = try await database.unlocker.newDataKey(from: kms, for: keyFile)
        var cipher = CipherSettings.new(format: 4, pageSize: pageSize)
        if database.configuration.plaintextHeader {
            cipher = cipher.withPlaintextHeader()
        }
        cipher = try await copy.make(
            key: newKey.plaintext, cipher: cipher, expectedRowCounts: rowCounts, progress: progress
        ) { [database] in try database.opener.openConnection(key: currentKey, keyFile: keyFile) }

        // Every slot gets the new key, escrow seals bound to the copy's salt.
        let slots: [KeySlot]
        let dropped: [KeySlot]
        do {
            (slots, dropped) = try await database.unlocker.wrap(
                newKey.plaintext, under: keyFile.slots, context: keyFile.encryptionContext, salt: cipher.salt,
                version: keyFile.version + 1, dropUnreachable: false)
        } catch {
            copy.remove()
            throw error
        }
        let journaled: KeyFile
        do {
            journaled = try await journal.begin(
                .upgrade, keyFile, newKey: newKey, provider: kms.providerName, version: keyFile.version + 1,
                cipher: cipher, slots: slots, sealedWith: currentKey)
        } catch {
            // A record may be on disk naming the copy: settle it now, as an open would. Never
            // remove what a journal points at: only a copy no pending record names.
            let settled = try await journal.outcome(after: error, of: keyFile)
            if settled == nil, (try? database.keyStore.read().pending) == nil {
                copy.remove()
            }
            guard let settled else { throw error }
            return recordUpgrade(settled, from: keyFile, dropped: dropped)
        }
        do {
            try database.reach(.swappingDatabase)
            try await copy.swapIn()
            try database.reach(.writingFinalKeyFile)
            let upgraded = try await database.keyStore.write(
                journaled.completingPending(at: KeyFile.now()), sealedWith: newKey.plaintext)
            return recordUpgrade(upgraded, from: keyFile, dropped: dropped)
        } catch {
            guard let settled = try await journal.outcome(after: error, of: keyFile) else { throw error }
            return recordUpgrade(settled, from: keyFile, dropped: dropped)
        }
    }

    /// The audit events of an upgrade: the new format, and each slot it no longer has.
    private func recordUpgrade(_ upgraded: KeyFile, from keyFile: KeyFile, dropped: [KeySlot]) -> KeyFile {
        database.record(.databaseUpgraded, upgraded)
        database.recordSlotsLeftOut(of: keyFile, by: upgraded, dropped: dropped, change: "an upgrade")
        return upgraded
    }
}
