import Logging

extension LocalDbKeyManager {
    /// Wraps the same data key under another KEK, possibly of another provider: one atomic
    /// `.key` write; the database is not touched, so it takes the same time at any size.
    ///
    /// Use it to rotate the KEK, to retire a master key, to move a database from the local
    /// provider to a KMS, or to rewrap under the newest version of a Vault Transit key (pass
    /// the same provider and KEK). The new wrap is unwrapped again before it replaces the old one, so a
    /// misconfigured target can never leave an unusable `.key` file. Open connections are not
    /// disturbed; a running rotation is waited for.
    ///
    /// ```swift
    /// let newMaster = try LocalKms(masterKey: replacementKey)
    /// try await manager.rewrap(to: newMaster, kekId: "default")
    /// ```
    ///
    /// - Returns: The updated `.key` file; a manager for it needs `target`.
    /// - Throws: KMS codes from either provider (nothing changed), or
    ///   ``DBKeyError/Code-swift.struct/io`` when the `.key` file cannot be written (the old one
    ///   is intact).
    @discardableResult
    public func rewrap(
        to target: any KeyManagementService,
        kekId: String,
        wait: Duration = .seconds(5)
    ) async throws -> KeyFile {
        // Shared: connections may stay open, but no rotation may rewrite the .key meanwhile.
        let (lock, keyFile) = try await acquireSettled(wait: wait)
        defer { lock.release() }
        let key = try await unwrapKey(of: keyFile)
        let resolvedKekId = try await target.health(kekId: kekId).kekId
        let wrapped: WrappedKey
        if let service = target as? any ServerSideRewrapping, keyFile.kms == target.providerName,
            let moved = try await service.serverSideRewrap(
                keyFile.encryptedDek, from: keyFile.kekId, to: resolvedKekId, context: keyFile.encryptionContext)
        {
            // Inside one service (AWS ReEncrypt, Vault rewrap) the plaintext never leaves it.
            wrapped = moved
        } else {
            wrapped = try await target.encrypt(key, kekId: resolvedKekId, context: keyFile.encryptionContext)
        }
        guard try await target.decrypt(wrapped, kekId: resolvedKekId, context: keyFile.encryptionContext) == key else {
            throw DBKeyError(
                .ciphertextInvalid,
                "The \(target.providerName) KMS did not give back the key it had just wrapped; \(keyFilePath) was not changed."
            )
        }
        var rewrapped = keyFile
        rewrapped.kms = target.providerName
        rewrapped.kekId = resolvedKekId
        rewrapped.encryptedDek = wrapped
        rewrapped.format = KeyFile.currentFormat
        try reach(.writingFinalKeyFile)
        rewrapped = try store(rewrapped, sealedWith: key)
        logger.info(
            "Rewrapped the data key",
            metadata: [
                "event": "key.rewrapped", "from_kek_id": "\(keyFile.kekId)", "kek_id": "\(resolvedKekId)",
                "kms": "\(target.providerName)", "version": "\(keyFile.version)",
            ]
        )
        return rewrapped
    }
}
