import Foundation
import SystemPackage

/// An encrypted copy of a database, built beside it with `sqlcipher_export`, checked (integrity,
/// every table's row count) and flushed before anything points at it: what a migration, an
/// upgrade and a creation swap in, and what a backup places elsewhere.
struct EncryptedCopy: Sendable {
    let database: ManagedDatabase
    /// Where the copy is built: beside the database (``DatabaseFiles/migrationCopy``) unless
    /// another path is given.
    let path: String

    init(database: ManagedDatabase, at path: String? = nil) {
        self.database = database
        self.path = path ?? database.files.migrationCopy
    }

    /// Builds the encrypted copy of what `openOriginal` opens at ``path`` under `key` and `cipher`, checks it (integrity, every table's row count: the
    /// expected ones, or those of the snapshot the copy was made from) and flushes it; removes
    /// it on any failure.
    ///
    /// - Returns: `cipher` with the copy's salt and the engine's version.
    func make(
        key: SecureBuffer,
        cipher: CipherSettings,
        expectedRowCounts: [String: Int64]?,
        progress: (@Sendable (KeyChangeProgress) -> Void)?,
        openOriginal: @escaping @Sendable () throws -> DatabaseConnection
    ) async throws -> CipherSettings {
        var cipher = cipher
        do {
            try DatabaseFiles.createEmptyFile(at: path)
            try database.reach(.changingDatabase)
            let total = (try? FilePath(database.databasePath).stat().size) ?? 0
            let reporter = reportProgress(of: [path], total: total, phase: .copying, to: progress)
            defer { reporter?.cancel() }
            let (version, snapshotCounts) = try await BlockingExecutor.shared.run(.long) { [cipher] in
                let original = try openOriginal()
                defer { original.close() }
                let counts = try original.exportEncrypted(to: path, key: key, cipher: cipher)
                return (try original.cipherVersion(), counts)
            }
            cipher.sqlcipherVersion = version
            // No copying report may follow the next phase's.
            reporter?.cancel()
            await reporter?.value
            // The steps after the copy take seconds on a large database: name each.
            let copied = (try? FilePath(path).stat().size) ?? total
            let clock = ContinuousClock.now
            progress?(KeyChangeProgress(phase: .verifying, bytesDone: copied, bytesTotal: total, elapsed: .zero))
            try database.reach(.verifyingNewKey)
            try await verifyCopy(
                at: path, key: key, cipher: cipher, expectedRowCounts: expectedRowCounts ?? snapshotCounts)
            progress?(
                KeyChangeProgress(
                    phase: .synchronizing, bytesDone: copied, bytesTotal: total, elapsed: ContinuousClock.now - clock))
            try await BlockingExecutor.shared.run(.short) { try DatabaseFiles.synchronize(path) }
            if cipher.salt == nil {
                cipher.salt = try DatabaseFiles.readSalt(of: path)
            }
        } catch {
            DatabaseFiles.removeDatabase(at: path)
            throw error
        }
        return cipher
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

    /// Checks the copy's integrity and row counts on the long-work lane.
    private func verifyCopy(
        at path: String, key: SecureBuffer, cipher: CipherSettings, expectedRowCounts: [String: Int64]
    ) async throws {
        let databasePath = database.databasePath
        try await BlockingExecutor.shared.run(.long) {
            try EncryptedCopy.verifyCopy(
                at: path, of: databasePath, key: key, cipher: cipher, expectedRowCounts: expectedRowCounts)
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
        let counts = try copy.tableRowCounts()
        guard problems.isEmpty, counts == expectedRowCounts else {
            throw DBKeyError(
                .databaseDamaged,
                "The encrypted copy of \(databasePath) does not match the original (integrity: \(problems.first ?? "ok"); row counts differ: \(counts != expectedRowCounts)). The original was left untouched."
            )
        }
    }

    /// Renames the copy over the database and flushes the directory, on the short-work lane.
    func swapIn() async throws {
        try await BlockingExecutor.shared.run(.short) { [self] in
            try database.files.replaceDatabase(with: path, action: "swap the encrypted copy in for")
        }
    }

    /// Removes the copy and its journals.
    func remove() {
        DatabaseFiles.removeDatabase(at: path)
    }
}
