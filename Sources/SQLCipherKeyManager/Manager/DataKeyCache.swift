import Synchronization

/// Unwrapped data keys kept for a short time, so that reopening a database within the TTL
/// needs no KMS call.
///
/// Entries are per wrapped key and version (so a rewrap or rotation never serves a stale key),
/// expire after the TTL, and are dropped — and so wiped, since ``SecureBuffer`` zeroes itself
/// when released — on expiry, on ``removeAll()`` and when the cache is released.
final class DataKeyCache: Sendable {
    private struct Entry {
        let key: SecureBuffer
        let expires: ContinuousClock.Instant
    }

    private struct Slot: Hashable {
        let version: Int
        let wrapped: String
    }

    private let entries = Mutex<[Slot: Entry]>([:])
    let timeToLive: Duration

    init(timeToLive: Duration) {
        self.timeToLive = timeToLive
    }

    /// The cached key for a `.key` file's current key, if one is still fresh.
    func key(for keyFile: KeyFile) -> SecureBuffer? {
        guard timeToLive > .zero else { return nil }
        let now = ContinuousClock.now
        return entries.withLock { entries in
            entries = entries.filter { $0.value.expires > now }
            return entries[Slot(version: keyFile.version, wrapped: keyFile.encryptedDek.encoded)]?.key
        }
    }

    /// Keeps `key` for the TTL, and schedules its removal when the TTL runs out.
    func store(_ key: SecureBuffer, for keyFile: KeyFile) {
        guard timeToLive > .zero else { return }
        let slot = Slot(version: keyFile.version, wrapped: keyFile.encryptedDek.encoded)
        let lifetime = timeToLive
        entries.withLock { $0[slot] = Entry(key: key, expires: ContinuousClock.now + lifetime) }
        Task { [weak self] in
            try? await Task.sleep(for: lifetime)
            self?.removeExpired()
        }
    }

    /// Drops every key (a rotation makes them all stale).
    func removeAll() {
        entries.withLock { $0.removeAll() }
    }

    /// The number of keys held, for tests.
    var count: Int { entries.withLock { $0.count } }

    private func removeExpired() {
        let now = ContinuousClock.now
        entries.withLock { $0 = $0.filter { $0.value.expires > now } }
    }
}
