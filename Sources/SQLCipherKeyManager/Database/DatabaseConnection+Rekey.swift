import Foundation
internal import CSQLCipher

extension DatabaseConnection {
    /// Re-encrypts every page under a new raw key in one write transaction (`sqlite3_rekey`).
    ///
    /// SQLCipher returns `SQLITE_OK` even when it rekeyed nothing (another connection reading,
    /// busy), so the caller must prove the new key with a new connection.
    ///
    /// - Throws: ``DBKeyError`` when SQLCipher reports a failure (a full disk, a busy database).
    func rekey(to key: SecureBuffer) throws {
        let keyText = try RawKeyText.make(for: key)
        let handle = try liveHandle()
        let code = keyText.withUnsafeBytes { text in
            sqlite3_rekey(handle, text.baseAddress, Int32(text.count))
        }
        try check(code, "rekeying (sqlite3_rekey)")
    }

    /// In WAL mode, copies every page of the WAL into the database file and empties the WAL
    /// (`wal_checkpoint(TRUNCATE)`); in rollback mode, does nothing.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseInUse`` when another connection's read
    ///   keeps pages in the WAL.
    func checkpointWAL() throws {
        guard try fetchAll("PRAGMA journal_mode").first?[0].textValue?.lowercased() == "wal" else { return }
        guard try fetchAll("PRAGMA wal_checkpoint(TRUNCATE)").first?[0] == .integer(0) else {
            throw DBKeyError(
                .databaseInUse, "Another connection is reading \(path): its WAL could not be emptied.", path: path)
        }
    }

    /// Copies this database into a new encrypted file with `sqlcipher_export`, keyed with a raw
    /// key and `cipher` (format, page size, plaintext header), carrying over `user_version`, `application_id` and WAL mode (which
    /// `sqlcipher_export` drops).
    ///
    /// The key is bound as a statement parameter of `ATTACH … KEY ?`, so it never appears in
    /// SQL text.
    ///
    /// - Throws: ``DBKeyError`` when attaching, exporting or detaching fails.
    @discardableResult
    func exportEncrypted(to path: String, key: SecureBuffer, cipher: CipherSettings) throws -> [String: Int64] {
        let handle = try liveHandle()
        let keyText = try RawKeyText.make(for: key)
        var statement: OpaquePointer?
        try check(
            sqlite3_prepare_v2(handle, "ATTACH DATABASE ? AS dbkey_export KEY ?", -1, &statement, nil),
            "preparing ATTACH"
        )
        defer { sqlite3_finalize(statement) }
        try check(
            sqlite3_bind_text(statement, 1, path, -1, unsafeBitCast(-1, to: sqlite3_destructor_type.self)),
            "binding the export path")
        try keyText.withUnsafeBytes { text in
            // SQLITE_STATIC: SQLite reads the key from our locked buffer and makes no copy of it.
            try check(
                sqlite3_bind_blob(statement, 2, text.baseAddress, Int32(text.count), nil), "binding the export key")
            let code = sqlite3_step(statement)
            try check(code == SQLITE_DONE ? SQLITE_OK : code, "attaching the encrypted copy")
        }
        sqlite3_finalize(statement)
        statement = nil
        let counts: [String: Int64]
        do {
            try apply(cipher, schema: "dbkey_export")
            let journalMode = try fetchAll("PRAGMA main.journal_mode").first?[0].textValue ?? "delete"
            // One read transaction: the copy and its row counts are one snapshot, even while
            // another connection writes.
            try execute("BEGIN")
            do {
                counts = try tableRowCounts()
                let userVersion = try fetchAll("PRAGMA main.user_version").first?[0].integerValue ?? 0
                let applicationID = try fetchAll("PRAGMA main.application_id").first?[0].integerValue ?? 0
                try execute("SELECT sqlcipher_export('dbkey_export')")
                try execute("PRAGMA dbkey_export.user_version = \(userVersion)")
                try execute("PRAGMA dbkey_export.application_id = \(applicationID)")
                try execute("COMMIT")
            } catch {
                try? execute("ROLLBACK")
                throw error
            }
            if journalMode.lowercased() == "wal" {
                try execute("PRAGMA dbkey_export.journal_mode = WAL")
            }
        } catch {
            try? execute("DETACH DATABASE dbkey_export")
            throw error
        }
        try execute("DETACH DATABASE dbkey_export")
        return counts
    }
}

extension DatabaseConnection {
    /// `PRAGMA data_version`: it changes when another connection commits.
    func dataVersion() throws -> Int64 {
        guard let version = try fetchAll("PRAGMA data_version").first?[0].integerValue else {
            throw DBKeyError(.sqlite, "PRAGMA data_version gave no answer for \(path).", path: path)
        }
        return version
    }

    /// Copies what it can of the WAL into the database file without waiting for readers or
    /// writers (`sqlite3_wal_checkpoint_v2`, `PASSIVE`).
    ///
    /// - Returns: The frames in the WAL and how many of them are now in the database file;
    ///   both -1 when the database is not in WAL mode.
    func checkpointWithoutWaiting() throws -> (frames: Int32, copied: Int32) {
        var frames: Int32 = -1
        var copied: Int32 = -1
        let code = sqlite3_wal_checkpoint_v2(try liveHandle(), nil, SQLITE_CHECKPOINT_PASSIVE, &frames, &copied)
        // BUSY: another connection is checkpointing; the caller asks again.
        guard code == SQLITE_OK || code == SQLITE_BUSY else {
            throw DBKeyError(
                .sqlite, "Copying the WAL of \(path) into the database failed (SQLite result \(code)).",
                path: path)
        }
        return code == SQLITE_BUSY ? (1, 0) : (frames, copied)
    }
}

extension DatabaseConnection {
    /// Makes the connection leave the files named like its WAL and WAL index in place when it
    /// closes as the database's last connection (`SQLITE_FCNTL_PERSIST_WAL`), instead of
    /// removing them.
    func keepWALWhenClosing() throws {
        var keep: Int32 = 1
        try check(
            sqlite3_file_control(try liveHandle(), "main", SQLITE_FCNTL_PERSIST_WAL, &keep), "keeping the WAL on close")
    }
}

extension DatabaseConnection {
    /// The number of rows of every table but SQLite's own, by name.
    func tableRowCounts() throws -> [String: Int64] {
        let tables = try fetchAll(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        .compactMap { $0[0].textValue }
        var counts: [String: Int64] = [:]
        for table in tables {
            let quoted = "\"" + table.replacingOccurrences(of: "\"", with: "\"\"") + "\""
            counts[table] = try fetchAll("SELECT count(*) FROM \(quoted)").first?[0].integerValue
        }
        return counts
    }
}
