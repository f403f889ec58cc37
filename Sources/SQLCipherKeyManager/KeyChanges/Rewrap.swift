/// KEK rotation and provider moves: the same data key wrapped under another KEK, one atomic
/// `.key` write (see ``LocalDbKeyManager/rewrap(to:kekId:wait:)``).
struct Rewrap {
    let database: ManagedDatabase

    func run(to target: any KeyManagementService, kekId: String, wait: Duration) async throws -> KeyFile {
        // Shared: connections may stay open, but no rotation may rewrite the .key meanwhile.
        try database.refuseSymbolicLink()
        let (lock, keyFile) = try await database.acquireSettled(wait: wait)
        defer { lock.release() }
        let key = try await database.unwrapKey(of: keyFile)
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
                "The \(target.providerName) KMS did not give back the key it had just wrapped; \(database.keyFilePath) was not changed.",
                path: database.keyFilePath, kekId: resolvedKekId
            )
        }
        var rewrapped = keyFile
        rewrapped.kms = target.providerName
        rewrapped.kekId = resolvedKekId
        rewrapped.encryptedDek = wrapped
        rewrapped.format = KeyFile.currentFormat
        try database.reach(.writingFinalKeyFile)
        rewrapped = try await database.store(rewrapped, sealedWith: key)
        database.record(.keyRewrapped, rewrapped, detail: "from \(keyFile.kms ?? "?") KEK \(keyFile.kekId)")
        return rewrapped
    }
}
