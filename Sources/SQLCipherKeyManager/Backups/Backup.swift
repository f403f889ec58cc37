import Foundation
import SystemPackage

/// The KEKs a backup's `.key` wraps its data key under.
public enum BackupKeyProtection: Sendable {
    /// The live `.key`'s: the primary KEK and every slot (escrow slots sealed again for the
    /// copy's salt).
    case sameAsDatabase
    /// Only this KEK: a backup KEK apart from the devices' (`dbkey backup --to URI`).
    case kek(any KeyManagementService, kekId: String)
    /// The primary KEK and a seal to this escrow key, no other slot: restored with its private
    /// key (`dbkey backup --escrow-public-key FILE`).
    case escrow(EscrowPublicKey)
}

/// A consistent copy of a managed database with a `.key` of its own (see
/// ``DatabaseKeyManager/backup(to:protection:newDataKey:progress:)``).
struct Backup {
    let database: ManagedDatabase

    func run(
        to destination: String, protection: BackupKeyProtection, newDataKey: Bool,
        progress: (@Sendable (KeyChangeProgress) -> Void)?
    ) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        if case .escrow(let publicKey) = protection {
            try publicKey.requireSafeToSealTo()
        }
        let destinationKey = KeyFile.path(forDatabase: destination)
        for path in [destination, destinationKey] where DatabaseFiles.exists(path) {
            throw DBKeyError(
                .alreadyInitialized,
                "\(path) already exists; a backup never replaces a file. Choose another destination.",
                path: path)
        }
        let destinationLock = try await DestinationLock.acquire(destination)
        var placed = false
        defer { destinationLock.release(placed: placed) }
        // Shared: the app keeps running; only a key change waits.
        let (lock, keyFile) = try await database.acquireSettled(wait: database.configuration.openWait)
        defer { lock.release() }
        let liveKey = try await database.unlocker.unwrapKey(of: keyFile)
        // The backup's data key: the live one, or a new one from the KEK that will be primary.
        let primary: (kms: any KeyManagementService, kekId: String)
        switch protection {
        case .kek(let target, let kekId):
            primary = (target, try await target.health(kekId: kekId).kekId)
        case .sameAsDatabase, .escrow:
            primary = (try database.unlocker.provider(named: keyFile.kms), keyFile.kekId)
        }
        let fresh =
            newDataKey
            ? try await primary.kms.generateDataKey(kekId: primary.kekId, context: keyFile.encryptionContext) : nil
        let dataKey = fresh?.plaintext ?? liveKey
        let version = newDataKey ? 1 : keyFile.version

        // The copy, from one snapshot, under a new salt (and a new header salt when it has one).
        var cipher = keyFile.cipher
        cipher.salt = nil
        if cipher.plaintextHeaderSize > 0 {
            cipher = cipher.withPlaintextHeader()
        }
        let copyPath = DatabaseFiles(destination).backupCopy
        DatabaseFiles.removeDatabase(at: copyPath)
        cipher = try await EncryptedCopy(database: database, at: copyPath).make(
            key: dataKey, cipher: cipher, expectedRowCounts: nil, progress: progress
        ) { [database] in try database.opener.openConnection(key: liveKey, keyFile: keyFile) }
        do {
            var backup = keyFile
            backup.pending = nil
            backup.cipher = cipher
            backup.version = version
            backup.keyCheck = KeyCheck(for: dataKey)
            if newDataKey {
                backup.createdAt = KeyFile.now()
                backup.rotatedAt = nil
            }
            backup.kms = primary.kms.providerName
            backup.kekId = fresh?.kekId ?? primary.kekId
            if let fresh {
                backup.encryptedDek = fresh.wrapped
            } else if case .kek = protection {
                backup.encryptedDek = try await database.unlocker.wrapChecked(
                    dataKey, by: primary.kms, kekId: primary.kekId, context: keyFile.encryptionContext)
            }
            switch protection {
            case .sameAsDatabase:
                backup.slots = try await database.unlocker.wrap(
                    dataKey, under: keyFile.slots, context: keyFile.encryptionContext, salt: cipher.salt,
                    version: version, dropUnreachable: false
                ).slots
            case .kek:
                backup.slots = []
            case .escrow(let publicKey):
                let escrowSlot = KeySlot(
                    number: 1, kms: KeySlot.escrowProvider, kekId: publicKey.id,
                    encryptedDek: WrappedDataKey(encoded: ""), escrowPublicKey: publicKey)
                backup.slots = try await database.unlocker.wrap(
                    dataKey, under: [escrowSlot], context: keyFile.encryptionContext, salt: cipher.salt,
                    version: version, dropUnreachable: false
                ).slots
            }
            backup.format = backup.requiredFormat
            try backup.requireRoomForKeyChanges(source: destinationKey)
            try await Backup.place(copyPath, at: destination, keyFile: backup.sealed(with: dataKey))
            placed = true
            database.record(
                .databaseBackedUp, keyFile, detail: "to \(destination)\(newDataKey ? " under a new data key" : "")")
            return backup.sealed(with: dataKey)
        } catch {
            DatabaseFiles.removeDatabase(at: copyPath)
            throw error
        }
    }

    /// Writes the backup's `.key` (never over one), then links the flushed copy in at
    /// `destination` (never over a file): a database at `destination` always has its `.key`.
    /// A failure removes what was placed.
    ///
    /// The `.key`, written only once the copy is flushed, is the placement's journal: a process
    /// killed after it leaves the `.key` and the whole copy, which
    /// ``DatabaseFiles/completeInterruptedPlacement()`` links in — the next open of `destination` or the
    /// next restore to it does. The caller holds `destination`'s exclusive lock.
    static func place(_ copyPath: String, at destination: String, keyFile: KeyFile) async throws {
        let keyPath = KeyFile.path(forDatabase: destination)
        try await BlockingExecutor.shared.run(.short) {
            do {
                try keyFile.write(to: keyPath, replacing: false)
            } catch let error as DBKeyError {
                // Placed, but its directory not flushed: take it back. (Never a file that was
                // already there: that is EEXIST, and nothing of ours.)
                guard error.errno != .fileExists else { throw error }
                _ = unlink(keyPath)
                throw error.code == .keyChangePending ? DBKeyError.io(error.errno ?? .ioError, "place", keyPath) : error
            }
            do {
                try valueOrErrno { link(copyPath, destination) }
            } catch {
                _ = unlink(keyPath)
                throw DBKeyError.io(error, "place the backup at", destination)
            }
            do {
                try valueOrErrno { unlink(copyPath) }
                try ProtectedFile.synchronizeDirectory(FilePath(destination).removingLastComponent())
            } catch {
                _ = unlink(destination)
                _ = unlink(keyPath)
                throw DBKeyError.io(error, "place the backup at", destination)
            }
        }
    }
}

/// The exclusive lock on the path a backup or restore places a database at, held for the
/// whole operation so that no open and no other placement sees a half-placed database.
struct DestinationLock {
    let lock: DatabaseLock
    let destination: String
    /// Whether this placement made the lock file (and so removes it if it places nothing).
    let madeLockFile: Bool

    static func acquire(_ destination: String) async throws -> DestinationLock {
        let lockPath = DatabaseFiles(destination).lock
        let existed = (try? FilePath(lockPath).stat(followTargetSymlink: false)) != nil
        let lock = try await DatabaseLock.acquire(.exclusive, databasePath: destination, wait: .zero)
        return DestinationLock(lock: lock, destination: destination, madeLockFile: !existed)
    }

    /// Releases the lock; a placement that put nothing in place leaves no lock file behind.
    func release(placed: Bool) {
        let keyPath = KeyFile.path(forDatabase: destination)
        if !placed && madeLockFile && (try? FilePath(keyPath).stat(followTargetSymlink: false)) == nil {
            _ = unlink(DatabaseFiles(destination).lock)
        }
        lock.release()
    }
}

/// A backup put in place under a database path (see
/// ``DatabaseKeyManager/restore(from:through:rewrapTo:kekId:)``).
struct Restore {
    let database: ManagedDatabase

    func run(
        from backupPath: String, through access: KeySlotAccess, rewrapTo target: (any KeyManagementService)?,
        kekId: String?
    ) async throws -> KeyFile {
        try database.opener.refuseSymbolicLink()
        // The backup, checked where it lies: its .key, its key, its salt, every page.
        let source = ManagedDatabase(
            databasePath: backupPath, providers: database.providers, configuration: database.configuration,
            logger: database.logger, faultInjector: nil, slotAccess: access)
        try source.opener.refuseSymbolicLink()
        var keyFile = try source.keyStore.read()
        // Exclusive on the target for the whole restore: no open, and no other restore, sees a
        // half-placed database.
        let (path, keyPath) = (database.databasePath, database.keyFilePath)
        let lock = try await DestinationLock.acquire(path)
        var placed = false
        defer { lock.release(placed: placed) }
        if try database.files.completeInterruptedPlacement() {
            placed = true
            database.record(
                .databaseRestored, try? database.keyStore.read(), detail: "an interrupted placement completed")
            let completed = try database.keyStore.read()
            // The same backup again: its restore is what was just completed.
            if completed.keyCheck == keyFile.keyCheck, completed.version == keyFile.version {
                return completed
            }
        }
        for existing in [path, keyPath] where DatabaseFiles.exists(existing) {
            throw DBKeyError(
                .alreadyInitialized,
                "\(existing) already exists\(placed ? " (an interrupted restore to it was just completed)" : ""); a restore never replaces a database or its .key. Restore to another path, or move it away first.",
                path: existing)
        }
        guard keyFile.pending == nil else {
            throw DBKeyError(
                .unsupportedFormat,
                "\(source.keyFilePath) records a key change in progress: it is a live database's .key, not a backup's. Use dbkey backup to make a backup.",
                path: source.keyFilePath)
        }
        let key = try await source.unlocker.unwrapKey(of: keyFile)
        let problems = try await BlockingExecutor.shared.run(.long) { [keyFile] in
            let connection = try source.opener.openConnection(key: key, keyFile: keyFile)
            defer { connection.close() }
            return try connection.integrityCheck()
        }
        guard problems.isEmpty else {
            throw DBKeyError(
                .databaseDamaged,
                "The backup \(backupPath) opens with its key but is damaged (\(problems.prefix(3).joined(separator: "; "))). Nothing was restored.",
                path: backupPath)
        }
        if let target, let kekId {
            let resolved = try await target.health(kekId: kekId).kekId
            keyFile.encryptedDek = try await database.unlocker.wrapChecked(
                key, by: target, kekId: resolved, context: keyFile.encryptionContext)
            keyFile.kms = target.providerName
            keyFile.kekId = resolved
            keyFile.slots.removeAll { $0.kms == target.providerName && $0.kekId == resolved }
        }
        keyFile.format = keyFile.requiredFormat
        let sealed = keyFile.sealed(with: key)
        let temporary = DatabaseFiles(path).restoringCopy
        DatabaseFiles.removeDatabase(at: temporary)
        do {
            try await BlockingExecutor.shared.run(.long) { try Restore.copyFile(backupPath, to: temporary) }
            try await Backup.place(temporary, at: path, keyFile: sealed)
        } catch {
            DatabaseFiles.removeDatabase(at: temporary)
            throw error
        }
        // What was placed opens together.
        do {
            try await database.opener.proveOpens(with: key, keyFile: sealed)
        } catch {
            _ = unlink(keyPath)
            _ = unlink(path)
            throw error
        }
        placed = true
        database.record(.databaseRestored, sealed, detail: "from \(backupPath)")
        return sealed
    }

    /// Copies `source` to a new file at `destination` (mode 0600, never over a file) and
    /// flushes it.
    static func copyFile(_ source: String, to destination: String) throws {
        do {
            let input = try FileDescriptor.open(FilePath(source), .readOnly, options: [.closeOnExec, .noFollow])
            try input.closeAfter {
                let output = try FileDescriptor.open(
                    FilePath(destination), .writeOnly, options: [.create, .exclusiveCreate, .noFollow, .closeOnExec],
                    permissions: [.ownerReadWrite])
                try output.closeAfter {
                    var buffer = [UInt8](repeating: 0, count: 1 << 20)
                    while true {
                        let count = try buffer.withUnsafeMutableBytes { try input.read(into: $0) }
                        if count == 0 { break }
                        _ = try buffer.withUnsafeBytes {
                            try output.writeAll(UnsafeRawBufferPointer(rebasing: $0.prefix(count)))
                        }
                    }
                    try output.synchronize()
                }
            }
        } catch let error as DBKeyError {
            throw error
        } catch {
            throw DBKeyError.io(error, "copy the backup to", destination)
        }
    }
}
