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
