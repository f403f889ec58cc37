import Logging
import SystemPackage

/// Opens a managed database's file with its data key and recorded cipher settings, and says
/// why when it does not open: a wrong key, another database's `.key`, a rekey outside the
/// journal, a damaged or missing file.
struct DatabaseOpener: Sendable {
    let files: DatabaseFiles
    /// How long a connection waits for SQLite's locks.
    let busyTimeout: Duration
    let logger: Logger

    /// Refuses a database path whose last component is a symbolic link, at every entry point.
    ///
    /// One rule for every command: DBKey acts on the file at the path, never through a link. A
    /// link would split what belongs together — a migration would encrypt a new file at the
    /// link and leave the plaintext target behind, the `.key` and its lock would sit beside the
    /// link while the pages live elsewhere. (Links in the directories above are followed as
    /// usual.)
    func refuseSymbolicLink() throws {
        guard let status = try? FilePath(files.database).stat(followTargetSymlink: false),
            status.type == .symbolicLink
        else { return }
        throw DBKeyError(
            .invalidConfiguration,
            "\(files.database) is a symbolic link; DBKey acts only on the database file itself, never through a link. Use the path it points to (realpath \(files.database)).",
            path: files.database
        )
    }

    /// Opens a connection with `key` and the recorded cipher settings, telling a wrong key from
    /// a damaged database when the first read fails.
    func openConnection(key: SecureBuffer, keyFile: KeyFile, onClose: (() -> Void)? = nil) throws -> DatabaseConnection
    {
        do {
            return try DatabaseConnection.open(
                path: files.database,
                key: key,
                cipher: keyFile.cipher,
                create: false,
                busyTimeout: busyTimeout,
                onClose: onClose
            )
        } catch DBKeyError.Code.wrongKey {
            throw try diagnoseFailedOpen(key: key, keyFile: keyFile)
        } catch let error as DBKeyError
            where error.resultCode == .SQLITE_CANTOPEN && !DatabaseFiles.exists(files.database)
        {
            // Asked only when SQLite could not open it, so a normal open makes no extra stat.
            // A backup or restore killed after writing the .key left its whole copy: finish it.
            if try files.completeInterruptedPlacement() {
                logger.debug("Completed an interrupted backup or restore placement")
                return try openConnection(key: key, keyFile: keyFile, onClose: onClose)
            }
            throw DBKeyError(
                .databaseNotFound,
                "\(files.database) does not exist, but its key file does. Restore the database from a backup.",
                path: files.database
            )
        }
    }

    /// Opens and closes the database with `key` off the cooperative pool, throwing what
    /// ``openConnection(key:keyFile:onClose:)`` would (wrong key, damaged, empty, missing).
    func proveOpens(with key: SecureBuffer, keyFile: KeyFile) async throws {
        try await BlockingExecutor.shared.run(.short) { [self] in
            try openConnection(key: key, keyFile: keyFile).close()
        }
    }

    /// Whether `key` opens the database file at `path` with `cipher`: `false` when the first
    /// read fails, other errors thrown. Off the cooperative pool: the open may roll back a hot
    /// journal.
    func opens(_ path: String, with key: SecureBuffer, cipher: CipherSettings) async throws -> Bool {
        try await BlockingExecutor.shared.run(.short) {
            do {
                try DatabaseConnection.open(path: path, key: key, cipher: cipher, create: false).close()
                return true
            } catch DBKeyError.Code.wrongKey {
                return false
            }
        }
    }

    /// Explains why a key that passed its key check does not open the database: a plaintext
    /// file; another database (its salt differs from the recorded one); a damaged start of the
    /// file (the salt differs in a byte or two); a database rekeyed after this `.key` was
    /// written (no page authenticates under the key); or a damaged first page (later pages do).
    private func diagnoseFailedOpen(key: SecureBuffer, keyFile: KeyFile) throws -> DBKeyError {
        let cipher = keyFile.cipher
        // With a plaintext header the file starts like a plaintext database and holds no salt:
        // the recorded one stands in for it.
        let header = cipher.plaintextHeaderSize > 0 ? cipher.salt ?? [] : try files.readSalt()
        if header == Array("SQLite format 3\0".utf8) {
            return DBKeyError(
                .unsupportedFormat,
                "\(files.database) is a plaintext SQLite database, not an encrypted one. Bring it under management with dbkey migrate --from-plaintext.",
                path: files.database
            )
        }
        guard let salt = keyFile.cipher.salt else {
            return DBKeyError(
                .wrongKey,
                "The key in \(files.keyFile) does not open \(files.database), or the database's first page is damaged; this older .key file records no salt to tell which.",
                resultCode: .SQLITE_NOTADB, path: files.database, kekId: keyFile.kekId
            )
        }
        guard salt == header else {
            let differing = zip(salt, header).filter { $0 != $1 }.count + abs(salt.count - header.count)
            if header.count == salt.count, differing <= 2 {
                return DBKeyError(
                    .databaseDamaged,
                    "\(files.database) is damaged at its start: the salt in its first 16 bytes differs from the one \(files.keyFile) records in \(differing) byte\(differing == 1 ? "" : "s") (another database's would differ in nearly all). Restore it from a backup.",
                    resultCode: .SQLITE_NOTADB, path: files.database
                )
            }
            return DBKeyError(
                .wrongKey,
                "Wrong key for this database: \(files.keyFile) belongs to another database (the salt it records differs from the database's). Find this database's own .key file.",
                resultCode: .SQLITE_NOTADB, path: files.database, kekId: keyFile.kekId
            )
        }
        let pages = try? PageAuthentication.authenticatingPages(
            path: files.database, key: key, salt: salt, cipher: cipher)
        if let pages, pages.read > 0, pages.authenticated == 0, cipher.plaintextHeaderSize > 0 {
            // The file holds no salt to compare: another database's .key and a rekey look alike.
            return DBKeyError(
                .wrongKey,
                "\(files.keyFile) (data key version \(keyFile.version)) does not fit \(files.database): no page authenticates under its key and salt. It is another database's .key, or the database was rekeyed after it was written (restore the .key written with it from a backup).",
                resultCode: .SQLITE_NOTADB, path: files.database, kekId: keyFile.kekId
            )
        }
        if let pages, pages.read > 0, pages.authenticated == 0 {
            return DBKeyError(
                .wrongKey,
                "\(files.keyFile) (data key version \(keyFile.version)) does not fit \(files.database): no page authenticates under its key, so the database was rekeyed after this .key was written — by a rotation (restore the .key written with it, version \(keyFile.version + 1) or later, from a backup) or by a handle outside DBKey's journal (PRAGMA rekey, GRDB's changePassphrase on a handle keyed through the seam: key changes go through rotateKey).",
                resultCode: .SQLITE_NOTADB, path: files.database, kekId: keyFile.kekId
            )
        }
        return DBKeyError(
            .databaseDamaged,
            "\(files.database) is damaged: its key and salt match \(files.keyFile)\(pages.map { $0.authenticated > 0 ? " and its later pages authenticate" : "" } ?? ""), but its first page does not decrypt. Restore it from a backup.",
            resultCode: .SQLITE_NOTADB, path: files.database
        )
    }
}
