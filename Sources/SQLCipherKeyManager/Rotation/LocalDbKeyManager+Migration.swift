import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// An existing database to bring under management.
public enum MigrationSource: Sendable {
    /// A plaintext SQLite database.
    case plaintext
    /// An SQLCipher database keyed with a passphrase, and the settings it needs to open.
    case passphrase(SecureBuffer, LegacyCipherSettings)
}

extension LocalDbKeyManager {
    /// The encrypted copy a migration builds beside the database before swapping it in.
    var migrationCopyPath: String { databasePath + ".dbkey-migrating" }

    /// Brings an existing database under management: a new data key from the KMS, an encrypted
    /// copy made with `sqlcipher_export` (keeping `user_version`, `application_id` and WAL
    /// mode), verified row for row, then swapped in with one `rename`.
    ///
    /// The swap is journaled like a rotation: the copy is complete and `fsync`ed before the
    /// `.key` file with a `pending` record is written, so a crash leaves either the original
    /// database with no `.key` file (run the migration again) or the encrypted one with a
    /// `.key` that opens it (the next open finishes the swap). Stop every process using the
    /// database first: its other connections would not see the swap. It needs free space for
    /// one more copy of the database, and SQLite cannot promise that the old plaintext bytes
    /// are gone from the disk afterwards.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/alreadyInitialized`` for a managed database;
    ///   ``DBKeyError/Code-swift.struct/wrongKey`` for a passphrase or settings that do not open
    ///   it; ``DBKeyError/Code-swift.struct/unsupportedFormat`` for a database the linked
    ///   SQLCipher cannot read (SQLCipher 4) or that is not what `source` says; KMS codes; in
    ///   every case the original database is untouched.
    @discardableResult
    public func migrate(
        from source: MigrationSource,
        progress: (@Sendable (KeyChangeProgress) -> Void)? = nil
    ) async throws -> KeyFile {
        let lock = try await DatabaseLock.acquire(.exclusive, databasePath: databasePath, wait: .zero)
        defer { lock.release() }
        if fileExists(keyFilePath) {
            let existing = try await settlePending(try load())
            throw DBKeyError(
                .alreadyInitialized,
                "\(databasePath) is already managed (key version \(existing.version)); there is nothing to migrate."
            )
        }
        guard fileExists(databasePath) else {
            throw DBKeyError(.databaseNotFound, "\(databasePath) does not exist.")
        }
        // A copy without a .key is what a crash before step 3 leaves: start again.
        removeMigrationCopy()

        // Proves the source opens before the KMS is asked for anything. A passphrase open runs
        // PBKDF2 (and a failed one the SQLCipher 4 check): blocking work, on its own thread.
        let rowCounts = try await onDedicatedThread { [self] in
            let original = try openOriginal(source)
            defer { original.close() }
            let counts = try tableRowCounts(original)
            try checkpointForSwap(original)
            return counts
        }
        let dataKey = try await kms.generateDataKey(
            kekId: configuration.kekId, context: configuration.encryptionContext)
        let pageSize = configuration.pageSize
        let copyPath = migrationCopyPath
        let sqlcipherVersion: String
        do {
            try createEmptyDatabaseFile(at: copyPath)
            try reach(.changingDatabase)
            let total = (try? FilePath(databasePath).stat().size) ?? 0
            let reporter = reportProgress(of: [copyPath], total: total, to: progress)
            defer { reporter?.cancel() }
            sqlcipherVersion = try await onDedicatedThread { [self] in
                let original = try openOriginal(source)
                defer { original.close() }
                try original.exportEncrypted(to: copyPath, key: dataKey.plaintext, pageSize: pageSize)
                return try original.cipherVersion()
            }
            try reach(.verifyingNewKey)
            try verifyCopy(key: dataKey.plaintext, pageSize: pageSize, expectedRowCounts: rowCounts)
            try synchronizeFile(copyPath)
        } catch {
            removeMigrationCopy()
            throw error
        }

        let salt = try readSalt(of: copyPath)
        var keyFile = newKeyFile(for: dataKey, sqlcipherVersion: sqlcipherVersion, salt: salt)
        keyFile.pending = PendingOperation(
            operation: PendingOperationKind.migrate,
            encryptedDek: dataKey.wrapped,
            kekId: dataKey.kekId,
            kms: kms.providerName,
            version: 1,
            keyCheck: KeyCheck(for: dataKey.plaintext),
            startedAt: keyFile.createdAt
        )
        do {
            try reach(.writingPendingKeyFile)
            keyFile = try store(keyFile, sealedWith: dataKey.plaintext)
        } catch {
            removeMigrationCopy()
            throw error
        }
        try reach(.swappingDatabase)
        try swapInCopy()
        try reach(.writingFinalKeyFile)
        let migrated = try store(keyFile.completingPending(at: keyFile.createdAt), sealedWith: dataKey.plaintext)
        logger.info(
            "Migrated the database under a new data key",
            metadata: ["event": "database.migrated", "kms": "\(migrated.kms)", "kek_id": "\(migrated.kekId)"]
        )
        return migrated
    }

    /// Finishes an interrupted migration: the copy was complete before the `.key` was written,
    /// so the swap is rolled forward.
    func settleMigration(_ keyFile: KeyFile, _ pending: PendingOperation) async throws -> KeyFile {
        let key = try await unwrapPendingKey(of: keyFile, pending)
        // A migration's pending key is also its current key, which sealed the file.
        try keyFile.verifySeal(with: key, source: keyFilePath)
        if try !opens(databasePath, with: key, keyFile: keyFile) {
            guard fileExists(migrationCopyPath), try opens(migrationCopyPath, with: key, keyFile: keyFile) else {
                throw neitherKeyOpens(keyFile, pending)
            }
            try swapInCopy()
        }
        let settled = try store(keyFile.completingPending(at: keyFile.createdAt), sealedWith: key)
        logger.notice("Completed an interrupted migration", metadata: ["event": "migration.completed"])
        return settled
    }

    private func openOriginal(_ source: MigrationSource) throws -> DatabaseConnection {
        switch source {
        case .plaintext:
            guard try readSalt() == Array("SQLite format 3\0".utf8) else {
                throw DBKeyError(
                    .unsupportedFormat,
                    "\(databasePath) is not a plaintext SQLite database (it may be encrypted: migrate it with its passphrase)."
                )
            }
            return try DatabaseConnection.open(path: databasePath, keying: .plaintext)
        case .passphrase(let passphrase, let settings):
            do {
                return try DatabaseConnection.open(path: databasePath, keying: .passphrase(passphrase, settings))
            } catch DBKeyError.Code.wrongKey {
                if SQLCipher4Detector.isSQLCipher4(path: databasePath, passphrase: passphrase) {
                    throw DBKeyError(
                        .unsupportedFormat,
                        "\(databasePath) is an SQLCipher 4 database; the linked SQLCipher 3.4.1 cannot read it. It was left untouched."
                    )
                }
                throw DBKeyError(
                    .wrongKey,
                    "The passphrase and settings do not open \(databasePath). Check the passphrase, and the settings older databases need (SQLCipher 2: --kdf-iter 4000; 1.x: --kdf-iter 4000 --no-hmac; other page sizes: --page-size)."
                )
            }
        }
    }

    /// Checkpoints a WAL and checks no other process holds the original, so that the rename
    /// cannot strand committed pages in a `-wal` file beside the new database.
    private func checkpointForSwap(_ original: DatabaseConnection) throws {
        if try original.fetchAll("PRAGMA journal_mode").first?[0].textValue?.lowercased() == "wal" {
            let result = try original.fetchAll("PRAGMA wal_checkpoint(TRUNCATE)")
            guard result.first?[0] == .integer(0) else {
                throw DBKeyError(.databaseInUse, "Another process is using \(databasePath): stop it before migrating.")
            }
        }
    }

    private func tableRowCounts(_ connection: DatabaseConnection) throws -> [String: Int64] {
        let tables = try connection.fetchAll(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        .compactMap { $0[0].textValue }
        var counts: [String: Int64] = [:]
        for table in tables {
            let quoted = "\"" + table.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            counts[table] = try connection.fetchAll("SELECT count(*) FROM \(quoted)").first?[0].integerValue
        }
        return counts
    }

    private func verifyCopy(key: SecureBuffer, pageSize: Int, expectedRowCounts: [String: Int64]) throws {
        let copy = try DatabaseConnection.open(path: migrationCopyPath, key: key, pageSize: pageSize, create: false)
        defer { copy.close() }
        let problems = try copy.integrityCheck()
        let counts = try tableRowCounts(copy)
        guard problems.isEmpty, counts == expectedRowCounts else {
            throw DBKeyError(
                .databaseDamaged,
                "The encrypted copy of \(databasePath) does not match the original (integrity: \(problems.first ?? "ok"); row counts differ: \(counts != expectedRowCounts)). The original was left untouched."
            )
        }
    }

    private func swapInCopy() throws {
        for suffix in ["-wal", "-shm", "-journal"] {
            _ = unlink(databasePath + suffix)
        }
        do {
            try valueOrErrno { rename(migrationCopyPath, databasePath) }
            let directory = FilePath(databasePath).removingLastComponent()
            try ProtectedFile.synchronizeDirectory(directory.isEmpty ? "." : directory)
        } catch {
            throw DBKeyError.io(error, "swap the encrypted copy in for", databasePath)
        }
    }

    private func removeMigrationCopy() {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            _ = unlink(migrationCopyPath + suffix)
        }
    }

    private func synchronizeFile(_ path: String) throws {
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            try descriptor.closeAfter { try descriptor.synchronize() }
        } catch {
            throw DBKeyError.io(error, "flush", path)
        }
    }
}
