import Foundation
import SystemPackage

/// What ``DatabaseKeyManager/doctor(now:)`` found: every problem, each with its fix.
public struct DoctorReport: Sendable {
    /// One problem.
    public struct Finding: Sendable, Hashable {
        /// The check that found it, a stable name: `file-mode`, `key-file`, `pending-change`,
        /// `slot-unreachable`, `slot-broken`, `kek-version-outdated`, `rotation-due`,
        /// `key-mismatch`, `leftover-journal`, `stale-temporary`, `disk-space`,
        /// `database-missing`, `escrow-key-unsafe` (critical: the data key can be read from the
        /// `.key`), `engine-unsupported`.
        public let check: String
        /// What is wrong.
        public let message: String
        /// What to do about it.
        public let fix: String
    }

    /// The database's path.
    public let databasePath: String
    /// The problems found; empty when all is well.
    public let findings: [Finding]

    /// Whether nothing was found.
    public var isHealthy: Bool { findings.isEmpty }
}

/// The read-only health report (see ``DatabaseKeyManager/doctor(now:)``).
struct Doctor {
    let database: ManagedDatabase
    let now: Date

    private var findings: [DoctorReport.Finding] = []

    init(database: ManagedDatabase, now: Date) {
        self.database = database
        self.now = now
    }

    mutating func run() async -> DoctorReport {
        let path = database.databasePath
        checkFiles()
        checkTemporaries()
        guard DatabaseFiles.exists(path) else {
            add(
                "database-missing", "\(path) does not exist.",
                "Restore it from a backup, with the .key written with it.")
            return report()
        }
        let keyFile: KeyFile
        do {
            keyFile = try database.keyStore.read()
        } catch let error as DBKeyError {
            add("key-file", error.message, "Restore \(database.keyFilePath) from a backup.")
            return report()
        } catch {
            return report()
        }
        if let pending = keyFile.pending {
            add(
                "pending-change",
                "An interrupted \(pending.operation.rawValue) (to data key version \(pending.version), started \(pending.startedAt.formatted(.iso8601))) is recorded in \(database.keyFilePath).",
                "Open the database once (dbkey verify \(path)): the open finishes or undoes it.")
        }
        if let due = keyFile.nextRotationDue, due <= now {
            add(
                "rotation-due",
                "The data key (version \(keyFile.version)) was due for rotation on \(due.formatted(.iso8601)).",
                "dbkey rotate \(path)")
        }
        checkEngine(keyFile)
        checkEscrowSlots(keyFile)
        await checkSlots(keyFile)
        // With a change pending, either key may be the database's: settling it decides.
        if keyFile.pending == nil {
            await checkKeyFitsDatabase(keyFile)
        }
        checkLeftoverJournals()
        checkDiskSpace()
        return report()
    }

    private func report() -> DoctorReport {
        DoctorReport(databasePath: database.databasePath, findings: findings)
    }

    private mutating func add(_ check: String, _ message: String, _ fix: String) {
        findings.append(DoctorReport.Finding(check: check, message: message, fix: fix))
    }

    /// Modes and owners: every file beside the database (``DatabaseFiles``), and a local master
    /// key.
    private mutating func checkFiles() {
        let path = database.databasePath
        var files = database.files.all
        if let masterKey = LocalKms.masterKeyFilePath(environment: .process) {
            files.append(masterKey)
        }
        for file in files {
            guard let status = try? FilePath(file).stat(followTargetSymlink: false) else { continue }
            if status.type == .symbolicLink {
                add(
                    "file-mode", "\(file) is a symbolic link; DBKey uses its files only directly.",
                    "Replace the link with the file it points to.")
            } else if status.userID.rawValue != geteuid() {
                let owner = status.userID.rawValue
                // The database's owner is the app's user: the fix is to be that user, or to give a
                // stray file back to it — never to take the app's files away from it.
                let appUser = (try? FilePath(path).stat(followTargetSymlink: false))?.userID.rawValue ?? owner
                add(
                    "file-mode", "\(file) is owned by uid \(owner), not by this user (\(geteuid())).",
                    owner == appUser
                        ? "Run dbkey as the database's owner, the app's user: sudo -u '#\(owner)' dbkey doctor \(path). Do not chown it to yourself: the app would lose it."
                        : "Give it back to the database's owner, the app's user: chown \(appUser) \(file).")
            } else if status.permissions.rawValue & 0o077 != 0 {
                add(
                    "file-mode",
                    "\(file) has mode \(String(status.permissions.rawValue & 0o777, radix: 8)): group or others may use it.",
                    "chmod 600 \(file)")
            }
        }
    }

    /// `.key` temporaries and a key change's copy that a killed process left.
    private mutating func checkTemporaries() {
        let keyPath = FilePath(database.keyFilePath)
        let directory = keyPath.removingLastComponent()
        let prefix = (keyPath.lastComponent?.string ?? "") + ".tmp."
        let names =
            (try? FileManager.default.contentsOfDirectory(atPath: directory.isEmpty ? "." : directory.string)) ?? []
        for name in names.sorted() where name.hasPrefix(prefix) {
            add(
                "stale-temporary", "\(directory.appending(name)) is a .key write a killed process left.",
                "Rotate or open the database once: the next key change removes it (or delete it).")
        }
        let path = database.databasePath
        for (copy, what) in database.files.keyChangeCopies where DatabaseFiles.exists(copy) {
            add(
                "stale-temporary", "\(copy) is \(what).",
                "Open the database once (dbkey verify \(path)): an open settles the change and removes a copy no record names."
            )
        }
        for copy in [database.files.restoringCopy, database.files.backupCopy] where DatabaseFiles.exists(copy) {
            add(
                "stale-temporary", "\(copy) is the copy of a restore or backup to \(path) that was interrupted.",
                DatabaseFiles.exists(database.keyFilePath)
                    ? "Open the database once (dbkey verify \(path)): its .key was written, so the open puts the copy in place."
                    : "Delete it (rm \(copy)) and restore again: its .key was never written.")
        }
        if RotationRequest.claimState(path) == .abandoned {
            add(
                "stale-temporary",
                "\(RotationRequest.claimedPath(path)) is a rotation request claimed by an app that stopped before answering.",
                "Rotate (dbkey rotate \(path)), which removes it, or delete it (rm \(RotationRequest.claimedPath(path))); the next open settles whatever the rotation left."
            )
        }
    }

    /// The linked SQLCipher reads the database's format (and a pending change's).
    private mutating func checkEngine(_ keyFile: KeyFile) {
        guard let engine = try? SQLCipherEngine.linked() else { return }
        let formats = Set([keyFile.cipher.format] + (keyFile.pending?.cipher.map { [$0.format] } ?? []))
        for format in formats.sorted() where !engine.supports(format: format) {
            add(
                "engine-unsupported",
                "\(database.databasePath) is in the SQLCipher \(format) format, which the linked SQLCipher \(engine.version) cannot read: every command but this one refuses it.",
                "Use a build linked against SQLCipher 4 (see \"SQLCipher Versions\" in DBKey's documentation).")
        }
    }

    /// Escrow slots sealed to a public key of small order: the data key is readable from the
    /// `.key` alone.
    private mutating func checkEscrowSlots(_ keyFile: KeyFile) {
        let path = database.databasePath
        for slot in keyFile.slots where slot.isUnsafeEscrow {
            add(
                "escrow-key-unsafe",
                "Critical: escrow slot \(slot.number) of \(database.keyFilePath) is sealed to \(slot.kekId), a public key of small order (RFC 7748 §6.1): anyone holding this .key, or a copy or backup of it, can compute the data key (version \(keyFile.version)) without any KMS.",
                "Remove the slot and replace the data key it exposed: dbkey slot remove \(path) \(slot.number) --rotate; then make a new escrow key (dbkey escrow keygen FILE) and add it (dbkey slot add \(path) --escrow-public-key FILE.pub). Backups made with this slot keep the exposed key: remake them."
            )
        }
    }

    /// Each provider's slot answers, gives this file's key, and is wrapped under its KEK's
    /// newest version.
    private mutating func checkSlots(_ keyFile: KeyFile) async {
        for slot in keyFile.allSlots where !slot.isEscrow {
            let name = slot.number == 0 ? "The primary KEK (slot 0)" : "Key slot \(slot.number)"
            do {
                let kms = try database.unlocker.provider(named: slot.kms)
                let health = try await kms.health(kekId: slot.kekId)
                let key = try await database.unlocker.unwrapKms(slot, context: keyFile.encryptionContext)
                if let check = keyFile.keyCheck, !check.matches(key) {
                    add(
                        "slot-broken",
                        "\(name), \(slot.kms) \(slot.kekId), gives a key that is not this file's data key.",
                        "Remove the slot (dbkey slot remove \(database.databasePath) \(slot.number)) and add it again.")
                }
                if let version = kms.kekVersion(of: slot.encryptedDek), let latest = health.latestKekVersion,
                    health.isOutdated(version)
                {
                    add(
                        "kek-version-outdated",
                        "\(name) is wrapped under version \(version) of \(slot.kms) \(slot.kekId); the newest is \(latest).",
                        "dbkey rewrap \(database.databasePath)\(slot.number == 0 ? "" : " --slot \(slot.number)")")
                }
            } catch let error as DBKeyError {
                let check = error.code == .ciphertextInvalid ? "slot-broken" : "slot-unreachable"
                add(
                    check, "\(name), \(slot.kms) \(slot.kekId), does not work: \(error.code): \(error.message)",
                    error.code == .kmsUnavailable
                        ? "Check the KMS's network and credentials; the other slots stand in while it is down."
                        : "Restore access to the KEK, or replace the slot (dbkey slot remove, dbkey slot add).")
            } catch {}
        }
    }

    /// The `.key`'s salt and key against the database's first page, read without SQLite.
    private mutating func checkKeyFitsDatabase(_ keyFile: KeyFile) async {
        let cipher = keyFile.cipher
        guard let key = try? await database.unlocker.unwrapKey(of: keyFile) else { return }
        let salt: [UInt8]
        if cipher.plaintextHeaderSize > 0 {
            guard let recorded = cipher.salt else { return }
            salt = recorded
        } else {
            guard let header = try? database.files.readSalt(), header.count == CipherSettings.saltByteCount else {
                return
            }
            if header == Array("SQLite format 3\0".utf8) {
                add(
                    "key-mismatch", "\(database.databasePath) is a plaintext SQLite database.",
                    "Bring it under management with dbkey migrate --from-plaintext.")
                return
            }
            if let recorded = cipher.salt, recorded != header {
                add(
                    "key-mismatch",
                    "\(database.keyFilePath) belongs to another database: the salt it records differs from the database's.",
                    "Find this database's own .key file (or restore both from one backup).")
                return
            }
            salt = header
        }
        guard
            let page = try? PageAuthentication.authenticatingPages(
                path: database.databasePath, key: key, salt: salt, cipher: cipher, firstPage: 1, limit: 1),
            page.read == 1
        else { return }
        if page.authenticated == 0 {
            add(
                "key-mismatch",
                "The first page of \(database.databasePath) does not authenticate under the key of \(database.keyFilePath) (data key version \(keyFile.version)): the .key is of another generation of this database (rekeyed after it was written), or the page is damaged.",
                "Restore the .key written with this database (a later version) from a backup; dbkey verify tells damage from a wrong key."
            )
        }
    }

    /// A rollback journal or WAL that no process holding the database explains.
    private mutating func checkLeftoverJournals() {
        let path = database.databasePath
        let leftovers = [database.files.rollbackJournal, database.files.wal].filter { file in
            ((try? FilePath(file).stat(followTargetSymlink: false))?.size ?? 0) > 0
        }
        guard !leftovers.isEmpty, !DatabaseLock.isHeld(databasePath: path) else { return }
        for file in leftovers {
            if file == database.files.rollbackJournal, database.files.rollbackJournalIsUnusable() == true {
                add(
                    "stale-temporary",
                    "\(file) is a rollback journal SQLite will never roll back (its header was never completed): a write stopped before it began. An open leaves it; it may hold page images under the key of that time.",
                    "The next key change removes it (dbkey rotate \(path)); or delete it while no process has the database open."
                )
                continue
            }
            add(
                "leftover-journal",
                "\(file) is left over with no process holding the database: the last writer stopped mid-transaction or without checkpointing.",
                "Open the database once (dbkey verify \(path)): SQLite rolls the journal back or checkpoints the WAL.")
        }
    }

    /// Room for a rotation: its journal is about the database's size.
    private mutating func checkDiskSpace() {
        let path = database.databasePath
        let room = database.files.roomForRotation()
        let needed = room.needed
        if let free = room.free, free < needed {
            add(
                "disk-space",
                "\(free / 1_000_000) MB are free beside \(path); a rotation needs about \(needed / 1_000_000) MB for its journal.",
                "Make room before the next rotation.")
        }
        if let limit = room.fileSizeLimit, limit < needed {
            add(
                "disk-space",
                "This process may write files of at most \(limit) bytes (ulimit -f); a rotation's journal needs about \(needed).",
                "Raise the limit (ulimit -f unlimited) for the process that rotates.")
        }
    }
}
