import Dispatch
import Synchronization

/// Unwrapped data keys kept for a short time, so that reopening a database within the TTL
/// needs no KMS call.
///
/// Entries are per wrapped key and version (so a rewrap or rotation never serves a stale key),
/// expire after the TTL, and are dropped — and so wiped, since ``SecureBuffer`` zeroes itself
/// when released — on expiry, on ``removeAll()`` and when the cache is released.
///
/// Expiry is a security promise, so it does not depend on scheduling: every access drops what
/// has expired and checks expiry before it returns a key, and a Dispatch timer on a queue of its
/// own — not a task on Swift's cooperative pool, which a busy app can starve — drops each entry
/// when its time is up.
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
    /// The eviction timers' queue: its threads are Dispatch's, never the cooperative pool's.
    private static let evictionQueue = DispatchQueue(label: "dbkey.key-cache-eviction")
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
        let (seconds, attoseconds) = lifetime.components
        let nanoseconds = seconds * 1_000_000_000 + attoseconds / 1_000_000_000
        DataKeyCache.evictionQueue.asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds) + 1_000_000)) {
            [weak self] in
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
