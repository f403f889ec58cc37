/// A database's `.key` file as its workflows read and write it: validated on every read, the
/// provider named where the older form leaves it to be inferred, sealed and flushed on every
/// write.
struct KeyFileStore: Sendable {
    let files: DatabaseFiles
    /// The registered providers, which claim the `kek_id`s of the older form.
    let providers: KmsRegistry

    /// The `.key` file.
    var path: String { files.keyFile }

    /// Reads and validates the `.key` file, naming its provider when the older form leaves it
    /// to be inferred.
    ///
    /// - Parameter cached: Whether a record parsed earlier from this very file may be returned
    ///   (an open under the shared lock); a key change always reads the file again.
    func read(cached: Bool = false) throws -> KeyFile {
        var keyFile = try KeyFile.read(from: path, cache: cached ? KeyFileCache.shared : nil)
        if keyFile.kms == nil {
            keyFile.kms = try providers.providerName(of: keyFile, source: path)
        }
        return keyFile
    }

    /// Seals `keyFile` with `key` (the data key it records as current), writes it atomically
    /// and durably off the cooperative pool, and returns what was written — after checking
    /// that the file stays readable in its largest state, a key change pending.
    @discardableResult
    func write(_ keyFile: KeyFile, sealedWith key: SecureBuffer) async throws -> KeyFile {
        // A change of an unsealed .key (the older forms, or one downgraded to them) seals its
        // cipher settings only once the database's first page has proven them.
        if keyFile.mac == nil, DatabaseFiles.exists(path) {
            try await proveUnsealedSettings(of: keyFile, key: key)
        }
        var keyFile = keyFile
        // Written in the lowest format that holds it: 4 with slots (its MAC covers them), else 3.
        keyFile.format = keyFile.requiredFormat
        try keyFile.requireRoomForKeyChanges(source: path)
        let sealed = keyFile.sealed(with: key)
        let path = path
        try await BlockingExecutor.shared.run(.short) { try sealed.write(to: path) }
        return sealed
    }

    /// Checks `keyFile`'s MAC with `key`, the data key it records as current — once for each
    /// record: a MAC proven for a record proves every record equal to it, field for field,
    /// while a `.key` changed in any field is checked again.
    func verifySeal(of keyFile: KeyFile, with key: SecureBuffer) throws {
        guard !KeyFileCache.shared.isSealProven(keyFile, at: path) else { return }
        try keyFile.verifySeal(with: key, source: path)
        KeyFileCache.shared.rememberSealProven(keyFile, at: path)
    }

    /// Checks that the cipher settings an unsealed `.key` implies authenticate the database's
    /// first page under `key`: nothing but the database vouches for them.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileCorrupt`` when they do not.
    private func proveUnsealedSettings(of keyFile: KeyFile, key: SecureBuffer) async throws {
        let cipher = keyFile.cipher
        let files = files
        let proven = try await BlockingExecutor.shared.run(.short) { () -> Bool in
            guard let salt = try cipher.salt ?? (cipher.plaintextHeaderSize > 0 ? nil : files.readSalt()) else {
                return false
            }
            let page = try PageAuthentication.authenticatingPages(
                path: files.database, key: key, salt: salt, cipher: cipher, firstPage: 1, limit: 1)
            return page.read == 1 && page.authenticated == 1
        }
        guard proven else {
            throw DBKeyError(
                .keyFileCorrupt,
                "\(path) is unsealed (the older form, or one downgraded to it), and the settings it implies (the SQLCipher \(cipher.format) format, \(cipher.pageSize)-byte pages) do not authenticate the first page of \(files.database): it was altered. Nothing was written; restore the .key from a backup.",
                path: path)
        }
    }
}
