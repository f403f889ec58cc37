import Logging
import SystemPackage

extension LocalDbKeyManager {
    /// Rotates the data key: a new DEK from the KMS, every page re-encrypted under it with
    /// `PRAGMA rekey`, the `.key` file updated.
    ///
    /// The change is journaled in the `.key` file so that a crash at any moment loses nothing:
    /// 1. the `.key.lock` lock is taken exclusively — no connection may be open;
    /// 2. the KMS creates the new key (a KMS failure changes nothing);
    /// 3. the `.key` file is rewritten with a `pending` record holding the new wrapped key;
    /// 4. `sqlite3_rekey` re-encrypts the database in one write transaction;
    /// 5. a new connection proves the new key (rekey can return OK having done nothing);
    /// 6. the `.key` file is rewritten with the new key current and `pending` cleared.
    ///
    /// A later open finishes or undoes a rotation that stopped between 3 and 6. The journal mode
    /// (rollback or WAL) is kept.
    ///
    /// ```swift
    /// if try manager.needsRotation() {
    ///     let keyFile = try await manager.rotateKey(wait: .seconds(30))
    ///     print("now at key version \(keyFile.version)")
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - wait: How long to wait for open connections to close.
    ///   - progress: Called about four times a second while pages are re-encrypted.
    /// - Returns: The updated `.key` file.
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when the database stays open
    ///   elsewhere; KMS codes (nothing changed); ``DBKeyError/Code-swift.struct/io`` (the
    ///   database keeps the key that opens it, and the `.key` file says which);
    ///   ``DBKeyError/Code-swift.struct/rotationInterrupted`` when neither key opens the result.
    @discardableResult
    public func rotateKey(
        wait: Duration = .zero,
        progress: (@Sendable (KeyChangeProgress) -> Void)? = nil
    ) async throws -> KeyFile {
        let lock = try await DatabaseLock.acquire(.exclusive, databasePath: databasePath, wait: wait)
        defer {
            // Whatever the outcome, no key unwrapped before the rotation is kept.
            keyCache.removeAll()
            lock.release()
        }
        let keyFile = try await settlePending(try load())
        let currentKey = try await unwrapKey(of: keyFile)
        let newKey = try await kms.generateDataKey(kekId: keyFile.kekId, context: keyFile.encryptionContext)
        guard newKey.plaintext.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .wrongKey, "The KMS generated a \(newKey.plaintext.count)-byte key; SQLCipher keys here are 32 bytes.")
        }
        var journal = keyFile
        journal.pending = PendingOperation(
            operation: PendingOperationKind.rotate,
            encryptedDek: newKey.wrapped,
            kekId: newKey.kekId,
            kms: kms.providerName,
            version: keyFile.version + 1,
            keyCheck: KeyCheck(for: newKey.plaintext),
            startedAt: KeyFile.now()
        )
        try reach(.writingPendingKeyFile)
        let journaled = try store(journal, sealedWith: currentKey)
        logger.info(
            "Rotation started",
            metadata: ["event": "rotation.started", "from_version": "\(keyFile.version)", "kek_id": "\(newKey.kekId)"]
        )

        do {
            try reach(.changingDatabase)
            try await rekey(from: currentKey, to: newKey.plaintext, keyFile: keyFile, progress: progress)
            try reach(.verifyingNewKey)
            guard try opens(databasePath, with: newKey.plaintext, keyFile: keyFile) else {
                throw DBKeyError(
                    .rotationInterrupted,
                    "sqlite3_rekey reported success but the new key does not open \(databasePath)."
                )
            }
        } catch {
            // Whichever key opens the database now decides; the journal records both.
            let settled = try await settlePending(journaled)
            guard settled.version == keyFile.version + 1 else {
                logger.warning("Rotation failed; the current key was kept", metadata: ["event": "rotation.failed"])
                throw error
            }
            return settled
        }

        try reach(.writingFinalKeyFile)
        let rotated = try store(journaled.completingPending(at: KeyFile.now()), sealedWith: newKey.plaintext)
        logger.info(
            "Rotation completed",
            metadata: ["event": "rotation.completed", "version": "\(rotated.version)", "kek_id": "\(rotated.kekId)"]
        )
        return rotated
    }

    /// Re-encrypts the database on a thread of its own, reporting the journal's growth.
    private func rekey(
        from currentKey: SecureBuffer,
        to newKey: SecureBuffer,
        keyFile: KeyFile,
        progress: (@Sendable (KeyChangeProgress) -> Void)?
    ) async throws {
        let path = databasePath
        let total = (try? FilePath(path).stat().size) ?? 0
        // The rekey rewrites every page: the rollback journal (or the WAL) grows to about the
        // database's size.
        let reporter = reportProgress(of: [path + "-journal", path + "-wal"], total: total, to: progress)
        defer { reporter?.cancel() }
        let pageSize = keyFile.cipher.pageSize
        try await onDedicatedThread {
            let connection = try DatabaseConnection.open(path: path, key: currentKey, pageSize: pageSize, create: false)
            try connection.rekey(to: newKey)
            connection.close()
        }
    }
}
