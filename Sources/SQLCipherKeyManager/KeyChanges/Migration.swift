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
/// ``DatabaseKeyManager/migrate(from:progress:)``).
struct Migration: Sendable {
    let database: ManagedDatabase

    /// The encrypted copy a migration builds beside the database before swapping it in.
    var copy: EncryptedCopy { EncryptedCopy(database: database) }

    func run(from source: MigrationSource, progress: (@Sendable (KeyChangeProgress) -> Void)?) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        try database.requireNewDatabasesAllowed()
        try database.configuration.encryptionContext.validate()
        let lock = try await DatabaseLock.acquire(.exclusive, databasePath: database.databasePath, wait: .zero)
        defer { lock.release() }
        database.files.removeStaleTemporaryKeyFiles(logger: database.logger)
        if DatabaseFiles.exists(database.keyFilePath) {
            let existing = try await database.journal.settle(try database.keyStore.read())
            throw DBKeyError(
                .alreadyInitialized,
                "\(database.databasePath) is already managed (key version \(existing.version)); there is nothing to migrate."
            )
        }
        guard DatabaseFiles.exists(database.databasePath) else {
            throw DBKeyError(.databaseNotFound, "\(database.databasePath) does not exist.")
        }
        // A copy without a .key is what a crash before step 3 leaves: start again.
        copy.remove()

        // Proves the source opens before the KMS is asked for anything. A passphrase open runs
        // PBKDF2 (and a failed one the SQLCipher 4 check): blocking work, on its own thread.
        let (rowCounts, resolvedSource) = try await BlockingExecutor.shared.run(.long) { [self] in
            let (original, resolved) = try openOriginal(source)
            defer { original.close() }
            let counts = try original.tableRowCounts()
            try copy.checkpointForSwap(original)
            return (counts, resolved)
        }
        let kms = try database.unlocker.newKeyProvider(configured: database.configuration.kekProvider)
        let configuration = database.configuration
        let dataKey = try await kms.generateDataKey(
            kekId: configuration.kekId, context: configuration.encryptionContext)
        try database.requireRoom(for: dataKey, provider: kms.providerName)
        var cipher = try database.newDatabaseCipher()
        cipher = try await copy.make(
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
            if !DatabaseFiles.exists(database.keyFilePath) {
                copy.remove()
            }
            throw error
        }
        let migrated: KeyFile
        do {
            try database.reach(.swappingDatabase)
            try await copy.swapIn()
            try database.reach(.writingFinalKeyFile)
            migrated = try await database.keyStore.write(
                keyFile.completingPending(at: keyFile.createdAt), sealedWith: dataKey.plaintext)
        } catch {
            guard let settled = try await database.journal.outcomeOfNewKeyFile(after: error) else { throw error }
            migrated = settled
        }
        database.record(.databaseMigrated, migrated)
        return migrated
    }

    /// Opens the original; for a passphrase, in the first format that opens it.
    ///
    /// - Returns: The connection, and `source` with that format pinned.
    private func openOriginal(_ source: MigrationSource) throws -> (
        connection: DatabaseConnection, source: MigrationSource
    ) {
        switch source {
        case .plaintext:
            guard try database.files.readSalt() == Array("SQLite format 3\0".utf8) else {
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
}
