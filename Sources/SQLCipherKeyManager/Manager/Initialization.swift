import Foundation

/// Creating a managed database: a new data key, a new encrypted database, its `.key` file (see
/// ``DatabaseKeyManager/initialize()``).
struct Initialization {
    let database: ManagedDatabase

    func run() async throws -> KeyFile {
        let configuration = database.configuration
        guard CipherSettings.newDatabasePageSizes.contains(configuration.pageSize) else {
            throw DBKeyError(
                .invalidConfiguration,
                "The page size \(configuration.pageSize) cannot hold an encrypted page: use a power of two from 1024 to 65536."
            )
        }
        if let days = configuration.rotationPeriodDays, !(1...36_500).contains(days) {
            throw DBKeyError(.invalidConfiguration, "The rotation period must be 1 to 36500 days; got \(days).")
        }
        try configuration.encryptionContext.validate()
        try database.opener.refuseSymbolicLink()
        try database.requireNewDatabasesAllowed()
        let kms = try database.unlocker.newKeyProvider(configured: database.configuration.kekProvider)
        if let reason = kms.primaryRefusal(kekId: configuration.kekId) {
            throw DBKeyError(.invalidConfiguration, "\(configuration.kekId) cannot be the primary KEK: \(reason)")
        }
        // Exclusive while the database exists without its .key, so that an open in another
        // process waits for the .key instead of finding it missing.
        let lockPath = database.files.lock
        let lockExisted = DatabaseFiles.exists(lockPath)
        let lock = try await DatabaseLock.acquire(
            .exclusive, databasePath: database.databasePath, wait: configuration.openWait)
        defer { lock.release() }
        if DatabaseFiles.exists(database.keyFilePath) {
            throw DBKeyError(
                .alreadyInitialized,
                "\(database.keyFilePath) already exists: this database is already managed. Remove the .key file only if you mean to lose the database.",
                path: database.keyFilePath
            )
        }
        if DatabaseFiles.exists(database.databasePath) {
            throw DBKeyError(
                .alreadyInitialized,
                "\(database.databasePath) already exists. To bring an existing database under management, migrate it (dbkey migrate).",
                path: database.databasePath
            )
        }
        // The new database is built beside its path and swapped in under the journal, as a
        // migration's copy is: a crash before the .key exists leaves only that copy (removed
        // here on the next try), and one after leaves a journal the next open completes.
        let copy = EncryptedCopy(database: database)
        let copyPath = copy.path
        DatabaseFiles.removeDatabase(at: copyPath)
        try DatabaseFiles.createEmptyFile(at: copyPath)
        var keyFile: KeyFile
        let dataKey: DataKey
        do {
            dataKey = try await kms.generateDataKey(
                kekId: configuration.kekId, context: configuration.encryptionContext)
            try database.requireRoom(for: dataKey, provider: kms.providerName)
            var cipher = try database.newDatabaseCipher()
            let engineVersion = try await BlockingExecutor.shared.run(.short) { [cipher] in
                let connection = try DatabaseConnection.open(
                    path: copyPath, key: dataKey.plaintext, cipher: cipher, create: true)
                defer { connection.close() }
                // Writing the header creates page 1, and with it the salt.
                try connection.execute("PRAGMA user_version = 0")
                return try connection.cipherVersion()
            }
            cipher.sqlcipherVersion = engineVersion
            if cipher.salt == nil {
                cipher.salt = try DatabaseFiles.readSalt(of: copyPath)
            }
            // Success means the next open works: prove it as that open will, before anything
            // points at the new file.
            let draft = database.newKeyFile(for: dataKey, provider: kms.providerName, cipher: cipher)
            guard try await database.opener.opens(copyPath, with: dataKey.plaintext, cipher: cipher) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "The new database does not open again with its settings (page size \(cipher.pageSize)); nothing was kept.",
                    path: database.databasePath)
            }
            try await BlockingExecutor.shared.run(.short) { try DatabaseFiles.synchronize(copyPath) }
            keyFile = try await database.journal.begin(
                .migrate, draft, newKey: dataKey, provider: kms.providerName, version: 1, sealedWith: dataKey.plaintext)
        } catch {
            // A .key in place but not flushed: settle it now, as an open would.
            if let created = try await database.journal.outcomeOfNewKeyFile(after: error) {
                database.record(.keyGenerated, created)
                return created
            }
            // Never remove what a journal points at: only a copy no .key names.
            if !DatabaseFiles.exists(database.keyFilePath) {
                DatabaseFiles.removeDatabase(at: copyPath)
                // Nothing is left behind: not even the lock file, when this call made it (no
                // database exists for anyone else to hold it for).
                if !lockExisted {
                    _ = unlink(lockPath)
                }
            }
            throw error
        }
        do {
            try database.reach(.swappingDatabase)
            try await copy.swapIn()
            try database.reach(.writingFinalKeyFile)
            keyFile = try await database.keyStore.write(
                keyFile.completingPending(at: keyFile.createdAt), sealedWith: dataKey.plaintext)
        } catch {
            // Journaled: what the record settles to is what happened.
            guard let created = try await database.journal.outcomeOfNewKeyFile(after: error) else { throw error }
            keyFile = created
        }
        database.record(.keyGenerated, keyFile)
        return keyFile
    }
}
