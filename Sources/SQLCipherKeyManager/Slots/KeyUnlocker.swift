import Logging

/// What turns a `.key` file into its data key: the registered providers, the key slots a
/// manager may use (``KeySlotAccess``), and the cache of keys unwrapped recently. It also
/// wraps new keys, checked, under the providers' KEKs.
struct KeyUnlocker: Sendable {
    let keyStore: KeyFileStore
    /// Which key slots may unwrap the data key.
    let access: KeySlotAccess
    /// When another slot may stand in for the primary.
    let slotFallback: SlotFallback
    /// Data keys unwrapped recently.
    let cache: DataKeyCache
    let audit: any AuditSink
    let logger: Logger

    init(
        keyStore: KeyFileStore, access: KeySlotAccess, slotFallback: SlotFallback, cacheTimeToLive: Duration,
        audit: any AuditSink, logger: Logger
    ) {
        self.keyStore = keyStore
        self.access = access
        self.slotFallback = slotFallback
        self.cache = DataKeyCache(timeToLive: cacheTimeToLive)
        self.audit = audit
        self.logger = logger
    }

    var providers: KmsRegistry { keyStore.providers }
    var keyFilePath: String { keyStore.path }
    var databasePath: String { keyStore.files.database }

    /// The same unlocker using only the slots `access` allows (for recovery), with a key cache
    /// of its own.
    func restricted(to access: KeySlotAccess) -> KeyUnlocker {
        KeyUnlocker(
            keyStore: keyStore, access: access, slotFallback: slotFallback, cacheTimeToLive: cache.timeToLive,
            audit: audit, logger: logger)
    }

    /// The registered provider of a `.key` file (or of its pending record).
    func provider(named name: String?) throws -> any KeyManagementService {
        do {
            return try providers.provider(named: name ?? "")
        } catch let error as DBKeyError where error.code == .unsupportedFormat {
            throw DBKeyError(
                .unsupportedFormat,
                "\(keyFilePath) names the KMS provider \"\(name ?? "")\", which is not registered with this manager (registered: \(providers.providerNames.joined(separator: ", "))). The file was left untouched.",
                path: keyFilePath
            )
        }
    }

    /// Unwraps the `.key` file's data key (through the slots ``access`` allows, or from the
    /// cache) and checks it against the file's key check and seal.
    func unwrapKey(of keyFile: KeyFile) async throws -> SecureBuffer {
        if let cached = cache.key(for: keyFile) {
            try keyStore.verifySeal(of: keyFile, with: cached)
            return cached
        }
        let key = try await unwrap(keyFile.currentKey, of: keyFile)
        try keyStore.verifySeal(of: keyFile, with: key)
        audit.record(
            AuditEvent(
                kind: .keyLoaded, databasePath: databasePath, provider: keyFile.kms, kekId: keyFile.kekId,
                dekVersion: keyFile.version))
        cache.store(key, for: keyFile)
        return key
    }

    /// A new data key from `kms` under the `.key`'s KEK and context, checked to be 32 bytes.
    func newDataKey(from kms: any KeyManagementService, for keyFile: KeyFile) async throws -> DataKey {
        let newKey = try await kms.generateDataKey(kekId: keyFile.kekId, context: keyFile.encryptionContext)
        guard newKey.plaintext.count == RawKeyText.keyByteCount else {
            throw DBKeyError(
                .wrongKey, "The KMS generated a \(newKey.plaintext.count)-byte key; SQLCipher keys here are 32 bytes.",
                kekId: keyFile.kekId)
        }
        return newKey
    }

    /// The provider new keys are wrapped by: `configured` (the configuration's `kekProvider`),
    /// or the only one registered.
    func newKeyProvider(configured name: String?) throws -> any KeyManagementService {
        if let name {
            guard providers.providerNames.contains(name) else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "Configuration.kekProvider is \"\(name)\", which is not registered (registered: \(providers.providerNames.joined(separator: ", ")))."
                )
            }
            return try providers.provider(named: name)
        }
        let names = providers.providerNames
        guard names.count == 1 else {
            throw DBKeyError(
                .invalidConfiguration,
                "Several KMS providers are registered (\(names.joined(separator: ", "))): say which one wraps new keys with Configuration.kekProvider."
            )
        }
        return try providers.provider(named: names[0])
    }
}
