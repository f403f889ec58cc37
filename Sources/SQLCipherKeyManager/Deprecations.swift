// The names this release replaced, kept for one release (see CHANGELOG.md).

@available(*, deprecated, renamed: "DatabaseKeyManager")
public typealias LocalDbKeyManager = DatabaseKeyManager

@available(*, deprecated, renamed: "KeyLease")
public typealias DatabaseKey = KeyLease

@available(*, deprecated, renamed: "WrappedDataKey")
public typealias WrappedKey = WrappedDataKey

extension DatabaseKeyManager {
    @available(*, deprecated, renamed: "leaseKey()")
    public func getOrCreateKey() async throws -> KeyLease {
        try await leaseKey()
    }

    @available(*, deprecated, renamed: "restricted(to:)")
    public func through(_ access: KeySlotAccess) -> DatabaseKeyManager {
        restricted(to: access)
    }
}

extension KmsHealth {
    @available(
        *, deprecated, renamed: "latestKekVersion", message: "Versions are opaque strings: Key Vault's are not numbers."
    )
    public var latestKeyVersion: Int? { latestKekVersion.flatMap { Int($0) } }

    @available(*, deprecated, renamed: "init(kekId:keyState:latency:latestKekVersion:)")
    public init(kekId: String, keyState: String, latency: Duration, latestKeyVersion: Int?) {
        self.init(
            kekId: kekId, keyState: keyState, latency: latency, latestKekVersion: latestKeyVersion.map(String.init))
    }
}

extension DatabaseKeyStatus {
    @available(
        *, deprecated, renamed: "wrappedKekVersion",
        message: "Versions are opaque strings: Key Vault's are not numbers."
    )
    public var wrappedKeyVersion: Int? { wrappedKekVersion.flatMap { Int($0) } }
}
