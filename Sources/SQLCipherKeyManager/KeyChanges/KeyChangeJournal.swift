import Foundation
import SystemPackage

/// The steps of a key change at which a failure is simulated in tests.
enum KeyChangeStep: Sendable, Hashable, CaseIterable {
    /// Before the `.key` file with the `pending` record is written.
    case writingPendingKeyFile
    /// After that file was renamed into place, as if its directory's `fsync` had failed: the
    /// record is on disk, but the caller sees an error.
    case pendingKeyFileWritten
    /// Before `sqlite3_rekey` (rotation) or `sqlcipher_export` (migration).
    case changingDatabase
    /// In a rotation by copy, with SQLite's write lock held and the WAL copied back, before
    /// the first page is read: the app's readers go on from here until the swap.
    case copyingPages
    /// Before the new key is proven by a new connection.
    case verifyingNewKey
    /// Before the renamed database replaces the old one (migration).
    case swappingDatabase
    /// Before the final `.key` file, without `pending`, is written.
    case writingFinalKeyFile
}

/// The one owner of the `.key` file's `pending` record: it writes the record before a key
/// change touches the database, completes or abandons it afterwards, and settles one that a
/// crash left behind — the only place that decides what an interrupted change means.
///
/// Every key change (``KeyChangeKind``) is settled by the same rule: the current key is tried
/// first, and opening with it rolls back a hot journal written under it, so either the change
/// never committed (the record is dropped) or only the new key opens (the change is
/// completed). When neither opens, nothing is changed and the error names both key checks.
struct KeyChangeJournal {
    let database: ManagedDatabase

    /// Writes `keyFile` with a pending record for `kind`, sealed with the current key.
    func begin(
        _ kind: KeyChangeKind,
        _ keyFile: KeyFile,
        newKey: DataKey,
        provider: String,
        version: Int,
        cipher: CipherSettings? = nil,
        slots: [KeySlot] = [],
        copy: RotationCopy? = nil,
        sealedWith currentKey: SecureBuffer
    ) async throws -> KeyFile {
        var journaled = keyFile
        journaled.pending = PendingOperation(
            operation: kind,
            encryptedDek: newKey.wrapped,
            kekId: newKey.kekId,
            kms: provider,
            version: version,
            keyCheck: KeyCheck(for: newKey.plaintext),
            startedAt: KeyFile.now(),
            cipher: cipher
        )
        journaled.pending?.slots = slots
        journaled.pending?.copy = copy
        try database.reach(.writingPendingKeyFile)
        let written = try await database.keyStore.write(journaled, sealedWith: currentKey)
        try database.reach(.pendingKeyFileWritten)
        return written
    }

    /// What is true after `error` stopped a key change of `original` that may have written its
    /// record: a record on disk is settled now, as the next open would settle it, so that the
    /// command reports the change as done or as not done — never a failure that the next open
    /// contradicts by completing it. The caller holds the exclusive lock.
    ///
    /// - Returns: The `.key` when the change is complete (its version moved on); `nil` when it
    ///   did not happen, for the caller to throw its error.
    /// - Throws: ``DBKeyError/Code-swift.struct/keyChangePending`` when the record cannot be
    ///   settled now: the next open settles it.
    func outcome(after error: any Error, of original: KeyFile) async throws -> KeyFile? {
        try await outcome(after: error) { $0.version != original.version }
    }

    /// ``outcome(after:of:)`` for a change that makes the `.key` (a new or migrated database):
    /// complete when the settled `.key` exists with no record pending.
    func outcomeOfNewKeyFile(after error: any Error) async throws -> KeyFile? {
        guard DatabaseFiles.exists(database.keyFilePath) else { return nil }
        return try await outcome(after: error) { $0.pending == nil }
    }

    private func outcome(after error: any Error, isComplete: (KeyFile) -> Bool) async throws -> KeyFile? {
        // A crash simulated by a test leaves the record for the next open, as a kill would.
        guard !database.isCrashSimulated else { throw error }
        let settled: KeyFile
        do {
            settled = try await settle(try database.keyStore.read())
        } catch let settling {
            // Settling removed an abandoned migration's .key: the change did not happen.
            if !DatabaseFiles.exists(database.keyFilePath) { return nil }
            let reason = { (error: any Error) in (error as? DBKeyError)?.message ?? "\(type(of: error))" }
            throw DBKeyError(
                .keyChangePending,
                "The key change of \(database.databasePath) is recorded in \(database.keyFilePath) but could not be finished now (\(reason(error)); then \(reason(settling))). The next open of the database completes or undoes it — run dbkey status \(database.databasePath) to see which; no data is lost.",
                path: database.databasePath)
        }
        if isComplete(settled) { return settled }
        // Undone: a .key that was in place but not flushed when the error came is no longer
        // what the change left, so it is no longer pending either.
        if let failure = error as? DBKeyError, failure.code == .keyChangePending {
            throw DBKeyError.io(failure.errno ?? .ioError, "write", database.keyFilePath)
        }
        return nil
    }

    /// Finishes or undoes the `.key` file's pending key change. The caller holds the
    /// exclusive lock.
    func settle(_ keyFile: KeyFile) async throws -> KeyFile {
        guard let pending = keyFile.pending else { return keyFile }
        switch pending.operation {
        case .rotate:
            return try await settleRotation(keyFile, pending)
        case .rotateByCopy:
            return try await settleCopyRotation(keyFile, pending)
        case .migrate:
            return try await settleMigration(keyFile, pending)
        case .upgrade:
            return try await settleUpgrade(keyFile, pending)
        }
    }

    private func settleRotation(_ keyFile: KeyFile, _ pending: PendingOperation) async throws -> KeyFile {
        let path = database.databasePath
        let currentKey = try await database.unlocker.unwrapKey(of: keyFile)
        if try await database.opener.opens(path, with: currentKey, cipher: keyFile.cipher) {
            let settled = try await database.keyStore.write(keyFile.abandoningPending(), sealedWith: currentKey)
            database.record(.keyChangeRecovered, settled, detail: "rotation rolled back: the current key was kept")
            return settled
        }
        let pendingKey = try await unwrapPendingKey(of: keyFile, pending)
        if try await database.opener.opens(path, with: pendingKey, cipher: keyFile.cipher) {
            let settled = try await database.keyStore.write(
                keyFile.completingPending(at: KeyFile.now()), sealedWith: pendingKey)
            database.record(.keyChangeRecovered, settled, detail: "rotation completed")
            return settled
        }
        throw neitherKeyOpens(keyFile, pending)
    }

    /// A rotation by copy, by the recovery table in <doc:ChangingKeys>: while the database still opens
    /// under the current key, a complete copy (its size and checksum as recorded) is renamed
    /// over it, rolling the rotation forward, and a partial or missing one is removed with the
    /// record; once only the pending key opens the database, the rename happened and the
    /// rotation is completed. The old file is never needed once the rename is durable.
    ///
    /// The copy is always `<db>.dbkey-rotating` of this database: a record naming another file
    /// (the database and its `.key` were copied or renamed since) names no copy of this one.
    private func settleCopyRotation(_ keyFile: KeyFile, _ pending: PendingOperation) async throws -> KeyFile {
        let path = database.databasePath
        let copyPath = database.files.rotationCopy
        let recorded = pending.copy.flatMap { $0.name == FilePath(copyPath).lastComponent?.string ? $0 : nil }
        let currentKey = try await database.unlocker.unwrapKey(of: keyFile)
        var pendingKey: SecureBuffer?
        if try await database.opener.opens(path, with: currentKey, cipher: keyFile.cipher) {
            guard let copy = recorded, try await isComplete(copy, at: copyPath, cipher: keyFile.cipher) else {
                DatabaseFiles.removeDatabase(at: copyPath)
                let settled = try await database.keyStore.write(keyFile.abandoningPending(), sealedWith: currentKey)
                database.record(.keyChangeRecovered, settled, detail: "rotation rolled back: the current key was kept")
                return settled
            }
            // Unwrapped before the rename: a KMS outage then changes nothing.
            pendingKey = try await unwrapPendingKey(of: keyFile, pending)
            try await BlockingExecutor.shared.run(.short) { [database] in
                try database.files.replaceDatabase(with: copyPath, action: "rename the re-encrypted copy over")
            }
        }
        let newKey: SecureBuffer
        if let pendingKey {
            newKey = pendingKey
        } else {
            newKey = try await unwrapPendingKey(of: keyFile, pending)
        }
        guard try await database.opener.opens(path, with: newKey, cipher: keyFile.cipher) else {
            throw neitherKeyOpens(keyFile, pending)
        }
        DatabaseFiles.removeDatabase(at: copyPath)
        let settled = try await database.keyStore.write(
            keyFile.completingPending(at: KeyFile.now()), sealedWith: newKey)
        database.record(.keyChangeRecovered, settled, detail: "rotation completed")
        return settled
    }

    /// Whether the copy at `path` has the recorded size and checksum: all of it was written.
    private func isComplete(_ copy: RotationCopy, at path: String, cipher: CipherSettings) async throws -> Bool {
        guard let status = try? FilePath(path).stat(followTargetSymlink: false), status.type == .regular,
            status.size == copy.size
        else { return false }
        return try await BlockingExecutor.shared.run(.long) {
            try PageReencryption(cipher: cipher).checksum(ofFileAt: path).checksum == copy.checksum
        }
    }

    /// A migration's copy was complete before its `.key` was written, so the swap is rolled
    /// forward.
    private func settleMigration(_ keyFile: KeyFile, _ pending: PendingOperation) async throws -> KeyFile {
        let key = try await unwrapPendingKey(of: keyFile, pending)
        // A migration's pending key is also its current key, which sealed the file.
        try keyFile.verifySeal(with: key, source: database.keyFilePath)
        let copy = EncryptedCopy(database: database)
        // The database is missing when a new database's copy was never swapped in (init).
        let databaseExists = DatabaseFiles.exists(database.databasePath)
        let databaseOpens =
            try await databaseExists
            ? database.opener.opens(database.databasePath, with: key, cipher: keyFile.cipher) : false
        if !databaseOpens {
            guard DatabaseFiles.exists(copy.path) else {
                // The swap never happened and the copy is gone (removed after a failure): the
                // original is the database, unmanaged. Drop the journal — the whole .key, whose
                // key never encrypted anything that exists — so the migration can run again.
                if databaseExists, try database.files.readSalt() == Array("SQLite format 3\0".utf8) {
                    try abandonMigration(keyFile)
                }
                throw neitherKeyOpens(keyFile, pending)
            }
            guard try await database.opener.opens(copy.path, with: key, cipher: keyFile.cipher) else {
                throw neitherKeyOpens(keyFile, pending)
            }
            try await copy.swapIn()
        }
        let settled = try await database.keyStore.write(
            keyFile.completingPending(at: keyFile.createdAt), sealedWith: key)
        database.record(.keyChangeRecovered, settled, detail: "migration completed")
        return settled
    }

    /// An upgrade's copy was complete before its `.key` was written: while the original still
    /// opens under the current key, the copy is swapped in (rolled forward) if it is there and
    /// opens, and the record is dropped if it is gone; once the original is gone, the swapped-in
    /// copy must open under the new key and settings.
    private func settleUpgrade(_ keyFile: KeyFile, _ pending: PendingOperation) async throws -> KeyFile {
        let path = database.databasePath
        let newCipher = pending.cipher ?? keyFile.cipher
        let copy = EncryptedCopy(database: database)
        let currentKey = try await database.unlocker.unwrapKey(of: keyFile)
        if try await database.opener.opens(path, with: currentKey, cipher: keyFile.cipher) {
            let newKey = try await unwrapPendingKey(of: keyFile, pending)
            guard DatabaseFiles.exists(copy.path),
                try await database.opener.opens(copy.path, with: newKey, cipher: newCipher)
            else {
                DatabaseFiles.removeDatabase(at: copy.path)
                let settled = try await database.keyStore.write(keyFile.abandoningPending(), sealedWith: currentKey)
                database.record(.keyChangeRecovered, settled, detail: "upgrade rolled back: the original was kept")
                return settled
            }
            try await copy.swapIn()
            return try await completeUpgrade(keyFile, newKey: newKey)
        }
        let newKey = try await unwrapPendingKey(of: keyFile, pending)
        guard try await database.opener.opens(path, with: newKey, cipher: newCipher) else {
            throw neitherKeyOpens(keyFile, pending)
        }
        return try await completeUpgrade(keyFile, newKey: newKey)
    }

    private func completeUpgrade(_ keyFile: KeyFile, newKey: SecureBuffer) async throws -> KeyFile {
        let settled = try await database.keyStore.write(
            keyFile.completingPending(at: KeyFile.now()), sealedWith: newKey)
        database.record(.keyChangeRecovered, settled, detail: "upgrade completed")
        return settled
    }

    /// Removes the `.key` of a migration that never swapped its copy in, and says so.
    private func abandonMigration(_ keyFile: KeyFile) throws -> Never {
        if unlink(database.keyFilePath) != 0 {
            let error = Errno(rawValue: Platform.errno)
            if error != .noSuchFileOrDirectory {
                throw DBKeyError.io(error, "remove the .key of an abandoned migration", database.keyFilePath)
            }
        }
        try? ProtectedFile.synchronizeDirectory(FilePath(database.keyFilePath).removingLastComponent())
        database.record(.keyChangeRecovered, keyFile, detail: "migration abandoned: the plaintext original was kept")
        throw DBKeyError(
            .keyFileMissing,
            "An interrupted migration of \(database.databasePath) had not swapped its encrypted copy in, and the copy is gone: the plaintext original is intact and still the database. Its .key was removed; run the migration again (dbkey migrate).",
            path: database.keyFilePath
        )
    }

    /// Unwraps the pending record's key, through the slots the manager may use, and checks it
    /// against the pending key check.
    func unwrapPendingKey(of keyFile: KeyFile, _ pending: PendingOperation) async throws -> SecureBuffer {
        do {
            return try await database.unlocker.unwrap(keyFile.pendingKey(pending), of: keyFile)
        } catch let error as DBKeyError where error.code == .unsupportedFormat {
            throw DBKeyError(
                .unsupportedFormat,
                "The interrupted key change in \(database.keyFilePath) used the \"\(pending.kms)\" KMS provider, which is not registered with this manager (registered: \(database.providers.providerNames.joined(separator: ", "))). Register it to finish the change; nothing was touched.",
                path: database.keyFilePath, kekId: pending.kekId
            )
        }
    }

    func neitherKeyOpens(_ keyFile: KeyFile, _ pending: PendingOperation) -> DBKeyError {
        DBKeyError(
            .rotationInterrupted,
            "Neither the current key (version \(keyFile.version), key check \(keyFile.keyCheck?.base64 ?? "none")) nor the pending key (version \(pending.version), key check \(pending.keyCheck.base64)) opens \(database.databasePath). Both files are left exactly as they are: keep copies of them, and restore the database from a backup if it was damaged.",
            path: database.databasePath
        )
    }
}

extension KeyFile {
    /// The record after the pending key change completed: the pending key becomes current.
    func completingPending(at date: Date) -> KeyFile {
        guard let pending else { return self }
        var completed = self
        completed.encryptedDek = pending.encryptedDek
        completed.kekId = pending.kekId
        completed.kms = pending.kms
        completed.version = pending.version
        completed.keyCheck = pending.keyCheck
        completed.cipher = pending.cipher ?? cipher
        switch pending.operation {
        case .rotate, .rotateByCopy, .upgrade: completed.rotatedAt = date
        case .migrate: break
        }
        completed.slots = pending.slots
        completed.pending = nil
        return completed
    }

    /// The record after the pending key change was abandoned: the current key stays.
    func abandoningPending() -> KeyFile {
        var abandoned = self
        abandoned.pending = nil
        return abandoned
    }
}
