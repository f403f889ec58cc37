import Foundation

/// Creating a managed database: a new data key, a new encrypted database, its `.key` file (see
/// ``LocalDbKeyManager/initialize()``).
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
        try database.refuseSymbolicLink()
        let kms = try database.newKeyProvider()
        // Exclusive while the database exists without its .key, so that an open in another
        // process waits for the .key instead of finding it missing.
        let lockPath = DatabaseLock.path(forDatabase: database.databasePath)
        let lockExisted = database.fileExists(lockPath)
        let lock = try await DatabaseLock.acquire(
            .exclusive, databasePath: database.databasePath, wait: configuration.openWait)
        defer { lock.release() }
        if database.fileExists(database.keyFilePath) {
            throw DBKeyError(
                .alreadyInitialized,
                "\(database.keyFilePath) already exists: this database is already managed. Remove the .key file only if you mean to lose the database.",
                path: database.keyFilePath
            )
        }
        try database.createEmptyDatabaseFile()
        let keyFile: KeyFile
        do {
            let dataKey = try await kms.generateDataKey(
                kekId: configuration.kekId, context: configuration.encryptionContext)
            try database.requireRoom(for: dataKey, provider: kms.providerName)
            let (path, pageSize) = (database.databasePath, configuration.pageSize)
            let sqlcipherVersion = try await BlockingExecutor.shared.run(.short) {
                let connection = try DatabaseConnection.open(
                    path: path, key: dataKey.plaintext, pageSize: pageSize, create: true)
                defer { connection.close() }
                // Writing the header creates page 1, and with it the salt.
                try connection.execute("PRAGMA user_version = 0")
                return try connection.cipherVersion()
            }
            keyFile = try await database.store(
                database.newKeyFile(
                    for: dataKey, provider: kms.providerName, sqlcipherVersion: sqlcipherVersion,
                    salt: try database.readSalt()),
                sealedWith: dataKey.plaintext
            )
            // Success means the next open works: prove it as that open will.
            guard try await database.opens(path, with: dataKey.plaintext, keyFile: keyFile) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "The new database at \(path) does not open again with its settings (page size \(pageSize)); nothing was kept.",
                    path: path)
            }
        } catch {
            if database.fileExists(database.keyFilePath) {
                _ = unlink(database.keyFilePath)
            }
            database.removeDatabaseFiles(at: database.databasePath)
            // Nothing is left behind: not even the lock file, when this call made it (no
            // database exists for anyone else to hold it for).
            if !lockExisted {
                _ = unlink(lockPath)
            }
            throw error
        }
        database.record(.keyGenerated, keyFile)
        return keyFile
    }
}
