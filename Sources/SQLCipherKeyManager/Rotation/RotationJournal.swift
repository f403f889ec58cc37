import Foundation
import Logging

/// The steps of a key change at which a failure is simulated in tests.
enum KeyChangeStep: Sendable, Hashable, CaseIterable {
    /// Before the `.key` file with the `pending` record is written.
    case writingPendingKeyFile
    /// Before `sqlite3_rekey` (rotation) or `sqlcipher_export` (migration).
    case changingDatabase
    /// Before the new key is proven by a new connection.
    case verifyingNewKey
    /// Before the renamed database replaces the old one (migration).
    case swappingDatabase
    /// Before the final `.key` file, without `pending`, is written.
    case writingFinalKeyFile
}

/// The `pending` record's operations.
enum PendingOperationKind {
    static let rotate = "rotate"
    static let migrate = "migrate"
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
        if pending.operation == PendingOperationKind.rotate {
            completed.rotatedAt = date
        }
        completed.pending = nil
        completed.format = KeyFile.currentFormat
        return completed
    }

    /// The record after the pending key change was abandoned: the current key stays.
    func abandoningPending() -> KeyFile {
        var abandoned = self
        abandoned.pending = nil
        return abandoned
    }
}

extension LocalDbKeyManager {
    /// Takes the shared lock with no key change pending, finishing or undoing an interrupted
    /// one first (under the exclusive lock).
    ///
    /// - Returns: The held lock and the `.key` file read under it.
    func acquireSettled(wait: Duration) async throws -> (DatabaseLock, KeyFile) {
        let lock = try await DatabaseLock.acquire(.shared, databasePath: databasePath, wait: wait)
        let keyFile = try load()
        guard keyFile.pending != nil else { return (lock, keyFile) }
        lock.release()
        do {
            let exclusive = try await DatabaseLock.acquire(.exclusive, databasePath: databasePath, wait: wait)
            defer { exclusive.release() }
            _ = try await settlePending(try load())
        }
        let settledLock = try await DatabaseLock.acquire(.shared, databasePath: databasePath, wait: wait)
        return (settledLock, try load())
    }

    /// Finishes or undoes the `.key` file's pending key change. The caller holds the
    /// exclusive lock.
    ///
    /// The current key is tried first: opening with it rolls back a hot journal (written under
    /// that key), so the rekey either never committed — the pending record is dropped — or it
    /// committed and only the pending key opens — the rotation is completed. When neither key
    /// opens, nothing is changed and the error names both key checks.
    func settlePending(_ keyFile: KeyFile) async throws -> KeyFile {
        guard let pending = keyFile.pending else { return keyFile }
        switch pending.operation {
        case PendingOperationKind.rotate:
            let currentKey = try await unwrapKey(of: keyFile)
            if try opens(databasePath, with: currentKey, keyFile: keyFile) {
                let settled = try store(keyFile.abandoningPending(), sealedWith: currentKey)
                logger.notice(
                    "An interrupted rotation had not changed the database; kept the current key",
                    metadata: ["event": "rotation.rolled-back", "version": "\(keyFile.version)"]
                )
                return settled
            }
            let pendingKey = try await unwrapPendingKey(of: keyFile, pending)
            if try opens(databasePath, with: pendingKey, keyFile: keyFile) {
                let settled = try store(keyFile.completingPending(at: KeyFile.now()), sealedWith: pendingKey)
                logger.notice(
                    "Completed an interrupted rotation",
                    metadata: [
                        "event": "rotation.completed", "version": "\(settled.version)", "kek_id": "\(settled.kekId)",
                    ]
                )
                return settled
            }
            throw neitherKeyOpens(keyFile, pending)
        case PendingOperationKind.migrate:
            return try await settleMigration(keyFile, pending)
        default:
            throw DBKeyError(
                .unsupportedFormat,
                "\(keyFilePath) records an interrupted \"\(pending.operation)\", which this version of DBKey does not know how to finish."
            )
        }
    }

    /// Unwraps the pending record's key and checks it against the pending key check.
    func unwrapPendingKey(of keyFile: KeyFile, _ pending: PendingOperation) async throws -> SecureBuffer {
        guard pending.kms == kms.providerName else {
            throw DBKeyError(
                .invalidConfiguration,
                "The interrupted key change in \(keyFilePath) used the \(pending.kms) KMS; open it with that provider to finish it."
            )
        }
        let key = try await kms.decrypt(pending.encryptedDek, kekId: pending.kekId, context: keyFile.encryptionContext)
        guard pending.keyCheck.matches(key) else {
            throw DBKeyError(
                .wrongKey, "The KMS returned a key that does not match the pending key check in \(keyFilePath).")
        }
        return key
    }

    /// Whether `key` opens the database file at `path` with the recorded page size: `false`
    /// when the first read fails, other errors thrown.
    func opens(_ path: String, with key: SecureBuffer, keyFile: KeyFile) throws -> Bool {
        do {
            try DatabaseConnection.open(path: path, key: key, pageSize: keyFile.cipher.pageSize, create: false).close()
            return true
        } catch DBKeyError.Code.wrongKey {
            return false
        }
    }

    func neitherKeyOpens(_ keyFile: KeyFile, _ pending: PendingOperation) -> DBKeyError {
        DBKeyError(
            .rotationInterrupted,
            "Neither the current key (version \(keyFile.version), key check \(keyFile.keyCheck?.base64 ?? "none")) nor the pending key (version \(pending.version), key check \(pending.keyCheck.base64)) opens \(databasePath). Both files are left exactly as they are: keep copies of them, and restore the database from a backup if it was damaged."
        )
    }

    /// Runs the fault injector for a step, if there is one.
    func reach(_ step: KeyChangeStep) throws {
        try faultInjector?(step)
    }
}
