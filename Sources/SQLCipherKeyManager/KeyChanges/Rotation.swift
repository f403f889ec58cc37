import Foundation
import Logging
import SystemPackage

/// DEK rotation: a new data key from the KMS, every page re-encrypted under it, journaled so
/// that a crash at any moment loses nothing (see
/// ``DatabaseKeyManager/rotateKey(wait:dropUnreachableSlots:inPlace:progress:)``). Every key slot
/// gets the new key in the same journaled change.
///
/// By default the pages are re-encrypted into a copy on every core (``CopyRotation``), which
/// the `.key` records before it is renamed over the database; in place, `PRAGMA rekey`
/// rewrites them through SQLite's journal, for a disk without room for a copy.
struct Rotation {
    let database: ManagedDatabase
    /// Leave out the slots whose provider cannot wrap the new key, instead of failing.
    var dropUnreachableSlots = false
    /// A slot the rotated record no longer has (``DatabaseKeyManager/removeSlot(_:rotate:wait:)``).
    var removingSlot: Int?
    /// Re-encrypt with `PRAGMA rekey` in place instead of into a copy.
    var inPlace = false

    func run(wait: Duration, progress: (@Sendable (KeyChangeProgress) -> Void)?) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        // Readers go on while a copy is made; in place, every page changes under them.
        var madeCopy: CopyRotation?
        do {
            let rotated = try await database.changingKey(wait: wait, readsGoOn: !inPlace) { keyFile in
                try await rotate(keyFile, progress: progress) { madeCopy = $0 }
            }
            // The old file's last handle closes once the app's readers have reopened; the
            // rotation returns when it is gone, and the old key with it.
            await madeCopy?.close()
            return rotated
        } catch {
            await madeCopy?.close()
            throw error
        }
    }

    private func rotate(
        _ keyFile: KeyFile, progress: (@Sendable (KeyChangeProgress) -> Void)?, copyMade: (CopyRotation) -> Void
    ) async throws -> KeyFile {
        let journal = database.journal
        let currentKey = try await database.unlocker.unwrapKey(of: keyFile)
        // Nothing is journaled for a database the current key does not open (damaged, emptied,
        // replaced): the rotation could neither finish nor be undone. A rotation by copy proves
        // it with the connection that holds the database through the copy; in place, with one
        // of its own (the rekeying connection runs nothing before the rekey).
        var copy: CopyRotation?
        if inPlace {
            try await database.opener.proveOpens(with: currentKey, keyFile: keyFile)
        } else {
            copy = try await CopyRotation.open(database, keyFile: keyFile, key: currentKey)
            copy.map(copyMade)
        }
        // The slots the rotated record will have: the primary's provider makes the new key.
        let target = try removingSlot.map { try keyFile.removingSlot($0, source: database.keyFilePath) } ?? keyFile
        let kms = try database.unlocker.provider(named: target.kms)
        let newKey = try await database.unlocker.newDataKey(from: kms, for: target)
        let version = keyFile.version + 1
        let (slots, dropped) = try await database.unlocker.wrap(
            newKey.plaintext, under: target.slots, context: keyFile.encryptionContext, salt: keyFile.cipher.salt,
            version: version, dropUnreachable: dropUnreachableSlots)
        database.logger.debug(
            "Rotation started",
            metadata: [
                "from_version": "\(keyFile.version)", "kek_id": "\(newKey.kekId)",
                "method": "\(inPlace ? "in place" : "copy")",
            ])
        let journaled: KeyFile
        let changeDatabase: () async throws -> Void
        if let copy {
            try database.reach(.changingDatabase)
            let record = try await copy.makeCopy(
                keyFile: keyFile, from: currentKey, to: newKey.plaintext, progress: progress)
            do {
                // Nothing is journaled yet: a read that does not finish in time leaves the key as it was.
                try await database.closeReadersForSwap()
            } catch {
                copy.abandon()
                throw error
            }
            do {
                journaled = try await journal.begin(
                    .rotateByCopy, keyFile, newKey: newKey, provider: kms.providerName, version: version,
                    slots: slots, copy: record, sealedWith: currentKey)
            } catch {
                // A record may be on disk naming the copy: settle it now, as an open would.
                copy.release()
                guard let settled = try await journal.outcome(after: error, of: keyFile) else { throw error }
                database.handOver(newKey.plaintext)
                recordRotation(settled, from: keyFile, dropped: dropped)
                return settled
            }
            changeDatabase = { try await copy.swapIn() }
        } else {
            do {
                journaled = try await journal.begin(
                    .rotate, keyFile, newKey: newKey, provider: kms.providerName, version: version, slots: slots,
                    sealedWith: currentKey)
            } catch {
                // A record may be on disk: settle it now (nothing was rekeyed: it is dropped).
                guard let settled = try await journal.outcome(after: error, of: keyFile) else { throw error }
                return settled
            }
            changeDatabase = {
                try database.reach(.changingDatabase)
                try await rekey(from: currentKey, to: newKey.plaintext, keyFile: keyFile, progress: progress)
            }
        }

        do {
            try await changeDatabase()
            try database.reach(.verifyingNewKey)
            guard try await database.opener.opens(database.databasePath, with: newKey.plaintext, cipher: keyFile.cipher)
            else {
                throw DBKeyError(
                    .rotationInterrupted,
                    "The re-encryption reported success but the new key does not open \(database.databasePath).",
                    path: database.databasePath
                )
            }
            try database.reach(.writingFinalKeyFile)
            let rotated = try await database.keyStore.write(
                journaled.completingPending(at: KeyFile.now()), sealedWith: newKey.plaintext)
            database.handOver(newKey.plaintext)
            recordRotation(rotated, from: keyFile, dropped: dropped)
            return rotated
        } catch {
            // Whichever key opens the database now decides; the journal records both.
            guard let settled = try await journal.outcome(after: error, of: keyFile) else {
                database.logger.debug("Rotation failed; the current key was kept")
                if let failure = error as? DBKeyError, failure.code == .rotationInterrupted {
                    // SQLCipher rolled back a rekey it reported as done: say why, if it can be
                    // told, and that nothing needs recovering.
                    throw rolledBack(keyFile)
                }
                throw error
            }
            database.handOver(newKey.plaintext)
            recordRotation(settled, from: keyFile, dropped: dropped)
            return settled
        }
    }

    /// The audit events of a rotation: the new key, and each slot it no longer has.
    private func recordRotation(_ rotated: KeyFile, from keyFile: KeyFile, dropped: [KeySlot]) {
        database.record(.keyRotated, rotated)
        database.recordSlotsLeftOut(of: keyFile, by: rotated, dropped: dropped, change: "a rotation")
    }

    /// The error for a rekey SQLCipher reported as done but rolled back: not enough room for its
    /// journal (a full disk, a file-size limit), or another process reading the database.
    private func rolledBack(_ keyFile: KeyFile) -> DBKeyError {
        let path = database.databasePath
        let room = database.files.roomForRotation()
        let size = room.databaseSize
        let noRoom =
            (room.free.map { $0 < room.needed } ?? false) || (room.fileSizeLimit.map { $0 < room.needed } ?? false)
        let kept = "\(path) keeps its current key (version \(keyFile.version)) and nothing needs recovery"
        if noRoom {
            return DBKeyError(
                .io,
                "The rotation did not take effect: the re-encryption's journal, about the database's size (\(String(format: "%.1f", Double(size) / 1_000_000)) MB), did not fit (free disk space or the process's file-size limit), and SQLCipher rolled it back. \(kept): make room and rotate again.",
                path: path)
        }
        guard DatabaseLock.sqliteLockHeldElsewhere(databasePath: path) else {
            // No other process holds it: what SQLCipher swallowed was a failed write.
            return DBKeyError(
                .io,
                "The rotation did not take effect: a write of the re-encryption failed (an I/O error or a full disk; no other process holds the database) and SQLCipher rolled it back. \(kept): check the disk and rotate again.",
                path: path)
        }
        return DBKeyError(
            .databaseInUse,
            "The rotation did not take effect: SQLCipher rolled the re-encryption back, as it does when another process has the database open outside DBKey. \(kept): close the other process and rotate again.",
            path: path)
    }

    /// Re-encrypts the database in place on the long-work lane, reporting the journal's growth.
    ///
    /// The key was proven on another connection: this one runs no statement before the rekey,
    /// as the `sqlcipher` shell's does (a read on the rekeying connection was reported to make
    /// SQLCipher sync its journal several times more often; with nothing run first, DBKey and
    /// the shell make the same 64 `fdatasync`s on a 53 MB database).
    private func rekey(
        from currentKey: SecureBuffer,
        to newKey: SecureBuffer,
        keyFile: KeyFile,
        progress: (@Sendable (KeyChangeProgress) -> Void)?
    ) async throws {
        let path = database.databasePath
        let total = (try? FilePath(path).stat().size) ?? 0
        // The rekey rewrites every page: the rollback journal (or the WAL) grows to about the
        // database's size.
        let reporter = reportProgress(
            of: [database.files.rollbackJournal, database.files.wal], total: total, phase: .rekeying, to: progress)
        defer { reporter?.cancel() }
        let cipher = keyFile.cipher
        try await BlockingExecutor.shared.run(.long) {
            let connection = try DatabaseConnection.open(
                path: path, keying: .raw(currentKey, cipher), proving: false)
            try connection.rekey(to: newKey)
            // In WAL mode the re-encrypted pages are in the WAL: copy them into the database
            // file and empty the WAL, so that no page under the old key remains on disk.
            try connection.checkpointWAL()
            connection.close()
        }
    }
}
