import Foundation
import Logging
import SystemPackage

/// An existing database to bring under management.
public enum MigrationSource: Sendable {
    /// A plaintext SQLite database.
    case plaintext
    /// An SQLCipher database keyed with a passphrase, and the settings it needs to open.
    case passphrase(SecureBuffer, PassphraseCipherSettings)
}

/// Bringing an existing database under management: a new data key, an encrypted copy made
/// with `sqlcipher_export`, verified, journaled and swapped in (see
/// ``LocalDbKeyManager/migrate(from:progress:)``).
struct Migration: Sendable {
    let database: ManagedDatabase

    /// The encrypted copy a migration builds beside the database before swapping it in.
    var copyPath: String { database.files.migrationCopy }

    func run(from source: MigrationSource, progress: (@Sendable (KeyChangeProgress) -> Void)?) async throws -> KeyFile {
        try database.refuseSymbolicLink()
        try database.requireNewDatabasesAllowed()
        try database.configuration.encryptionContext.validate()
        let lock = try await DatabaseLock.acquire(.exclusive, databasePath: database.databasePath, wait: .zero)
        defer { lock.release() }
        database.removeStaleTemporaryKeyFiles()
        if database.fileExists(database.keyFilePath) {
            let existing = try await database.journal.settle(try database.load())
            throw DBKeyError(
                .alreadyInitialized,
                "\(database.databasePath) is already managed (key version \(existing.version)); there is nothing to migrate."
            )
        }
        guard database.fileExists(database.databasePath) else {
            throw DBKeyError(.databaseNotFound, "\(database.databasePath) does not exist.")
        }
        // A copy without a .key is what a crash before step 3 leaves: start again.
        removeMigrationCopy()

        // Proves the source opens before the KMS is asked for anything. A passphrase open runs
        // PBKDF2 (and a failed one the SQLCipher 4 check): blocking work, on its own thread.
        let (rowCounts, resolvedSource) = try await BlockingExecutor.shared.run(.long) { [self] in
            let (original, resolved) = try openOriginal(source)
            defer { original.close() }
            let counts = try Migration.tableRowCounts(original)
            try checkpointForSwap(original)
            return (counts, resolved)
        }
        let kms = try database.newKeyProvider()
        let configuration = database.configuration
        let dataKey = try await kms.generateDataKey(
            kekId: configuration.kekId, context: configuration.encryptionContext)
        try database.requireRoom(for: dataKey, provider: kms.providerName)
        var cipher = try database.newDatabaseCipher()
        cipher = try await makeVerifiedCopy(
            key: dataKey.plaintext, cipher: cipher, expectedRowCounts: rowCounts, progress: progress
        ) { [self] in try openOriginal(resolvedSource).connection }

        var keyFile = database.newKeyFile(for: dataKey, provider: kms.providerName, cipher: cipher)
        do {
            // A migration's new key is also its current key: it seals the journaled file.
            keyFile = try await database.journal.begin(
                .migrate, keyFile, newKey: dataKey, provider: kms.providerName, version: 1,
                sealedWith: dataKey.plaintext)
        } catch {
            // Once the .key is in place (its write may fail after the rename, in the
            // directory's fsync), the copy is the migration: settle it now, as an open would.
            if let migrated = try await database.journal.outcomeOfNewKeyFile(after: error) {
                database.record(.databaseMigrated, migrated)
                return migrated
            }
            // Never remove what the journal points at.
            if !database.fileExists(database.keyFilePath) {
                removeMigrationCopy()
            }
            throw error
        }
        let migrated: KeyFile
        do {
            try database.reach(.swappingDatabase)
            try await swapInCopyOffThePool()
            try database.reach(.writingFinalKeyFile)
            migrated = try await database.store(
                keyFile.completingPending(at: keyFile.createdAt), sealedWith: dataKey.plaintext)
        } catch {
            guard let settled = try await database.journal.outcomeOfNewKeyFile(after: error) else { throw error }
            migrated = settled
        }
        database.record(.databaseMigrated, migrated)
        return migrated
    }

    /// Builds the encrypted copy of what `openOriginal` opens at `copyPath` (``copyPath`` by
    /// default) under `key` and `cipher`, checks it (integrity, every table's row count: the
    /// expected ones, or those of the snapshot the copy was made from) and flushes it; removes
    /// it on any failure.
    ///
    /// - Returns: `cipher` with the copy's salt and the engine's version.
    func makeVerifiedCopy(
        at copyPath: String? = nil,
        key: SecureBuffer,
        cipher: CipherSettings,
        expectedRowCounts: [String: Int64]?,
        progress: (@Sendable (KeyChangeProgress) -> Void)?,
        openOriginal: @escaping @Sendable () throws -> DatabaseConnection
    ) async throws -> CipherSettings {
        let copyPath = copyPath ?? self.copyPath
        var cipher = cipher
        do {
            try database.createEmptyDatabaseFile(at: copyPath)
            try database.reach(.changingDatabase)
            let total = (try? FilePath(database.databasePath).stat().size) ?? 0
            let reporter = reportProgress(of: [copyPath], total: total, phase: .copying, to: progress)
            defer { reporter?.cancel() }
            let (version, snapshotCounts) = try await BlockingExecutor.shared.run(.long) { [cipher] in
                let original = try openOriginal()
                defer { original.close() }
                let counts = try original.exportEncrypted(to: copyPath, key: key, cipher: cipher)
                return (try original.cipherVersion(), counts)
            }
            cipher.sqlcipherVersion = version
            // No copying report may follow the next phase's.
            reporter?.cancel()
            await reporter?.value
            // The steps after the copy take seconds on a large database: name each.
            let copied = (try? FilePath(copyPath).stat().size) ?? total
            let clock = ContinuousClock.now
            progress?(KeyChangeProgress(phase: .verifying, bytesDone: copied, bytesTotal: total, elapsed: .zero))
            try database.reach(.verifyingNewKey)
            try await verifyCopy(
                at: copyPath, key: key, cipher: cipher, expectedRowCounts: expectedRowCounts ?? snapshotCounts)
            progress?(
                KeyChangeProgress(
                    phase: .synchronizing, bytesDone: copied, bytesTotal: total, elapsed: ContinuousClock.now - clock))
            try await BlockingExecutor.shared.run(.short) { try Migration.synchronizeFile(copyPath) }
            if cipher.salt == nil {
                cipher.salt = try database.readSalt(of: copyPath)
            }
        } catch {
            database.removeDatabaseFiles(at: copyPath)
            throw error
        }
        return cipher
    }

    /// Opens the original; for a passphrase, in the first format that opens it.
    ///
    /// - Returns: The connection, and `source` with that format pinned.
    private func openOriginal(_ source: MigrationSource) throws -> (
        connection: DatabaseConnection, source: MigrationSource
    ) {
        switch source {
        case .plaintext:
            guard try database.readSalt() == Array("SQLite format 3\0".utf8) else {
                throw DBKeyError(
                    .unsupportedFormat,
                    "\(database.databasePath) is not a plaintext SQLite database (it may be encrypted: migrate it with its passphrase)."
                )
            }
            return (try DatabaseConnection.open(path: database.databasePath, keying: .plaintext), source)
        case .passphrase(let passphrase, let settings):
            let engine = try SQLCipherEngine.linked()
            for format in settings.formatsToTry(on: engine) {
                do {
                    let connection = try DatabaseConnection.open(
                        path: database.databasePath, keying: .passphrase(passphrase, format: format, settings))
                    var pinned = settings
                    pinned.format = format
                    return (connection, .passphrase(passphrase, pinned))
                } catch DBKeyError.Code.wrongKey {
                    continue
                }
            }
            if !engine.supports(format: 4),
                SQLCipher4Detector.isSQLCipher4(path: database.databasePath, passphrase: passphrase)
            {
                throw DBKeyError(
                    .unsupportedFormat,
                    "\(database.databasePath) is an SQLCipher 4 database; the linked SQLCipher \(engine.version) cannot read it (link SQLCipher 4: see \"SQLCipher Versions\" in DBKey's documentation). It was left untouched."
                )
            }
            let tried = settings.formatsToTry(on: engine).map { "SQLCipher \($0)" }.joined(separator: " and ")
            throw DBKeyError(
                .wrongKey,
                "The passphrase and settings do not open \(database.databasePath) (tried the \(tried) format). Check the passphrase, and the settings older databases need (SQLCipher 2: --kdf-iter 4000; 1.x: --kdf-iter 4000 --no-hmac; other page sizes: --page-size)."
            )
        }
    }

    /// Checkpoints a WAL and checks no other process holds the original, so that the rename
    /// cannot strand committed pages in a `-wal` file beside the new database.
    func checkpointForSwap(_ original: DatabaseConnection) throws {
        do {
            try original.checkpointWAL()
        } catch DBKeyError.Code.databaseInUse {
            throw DBKeyError(
                .databaseInUse, "Another process is using \(database.databasePath): stop it and try again.")
        }
    }

    static func tableRowCounts(_ connection: DatabaseConnection) throws -> [String: Int64] {
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

    /// Checks the copy's integrity and row counts on the long-work lane.
    private func verifyCopy(
        at copyPath: String, key: SecureBuffer, cipher: CipherSettings, expectedRowCounts: [String: Int64]
    ) async throws {
        let path = database.databasePath
        try await BlockingExecutor.shared.run(.long) {
            try Migration.verifyCopy(
                at: copyPath, of: path, key: key, cipher: cipher, expectedRowCounts: expectedRowCounts)
        }
    }

    private static func verifyCopy(
        at copyPath: String,
        of databasePath: String,
        key: SecureBuffer,
        cipher: CipherSettings,
        expectedRowCounts: [String: Int64]
    ) throws {
        let copy = try DatabaseConnection.open(path: copyPath, key: key, cipher: cipher, create: false)
        defer { copy.close() }
        let problems = try copy.integrityCheck()
        let counts = try Migration.tableRowCounts(copy)
        guard problems.isEmpty, counts == expectedRowCounts else {
            throw DBKeyError(
                .databaseDamaged,
                "The encrypted copy of \(databasePath) does not match the original (integrity: \(problems.first ?? "ok"); row counts differ: \(counts != expectedRowCounts)). The original was left untouched."
            )
        }
    }

    /// ``swapInCopy()`` on the short-work lane: a rename and a directory `fsync`.
    func swapInCopyOffThePool() async throws {
        try await BlockingExecutor.shared.run(.short) { [self] in try swapInCopy() }
    }

    private func swapInCopy() throws {
        try database.replaceDatabase(with: copyPath, action: "swap the encrypted copy in for")
    }

    func removeMigrationCopy() {
        database.removeDatabaseFiles(at: copyPath)
    }

    static func synchronizeFile(_ path: String) throws {
        do {
            let descriptor = try FileDescriptor.open(FilePath(path), .readOnly, options: [.closeOnExec])
            try descriptor.closeAfter { try descriptor.synchronize() }
        } catch {
            throw DBKeyError.io(error, "flush", path)
        }
    }
}
