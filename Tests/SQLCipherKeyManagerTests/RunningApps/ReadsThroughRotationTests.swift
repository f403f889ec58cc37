import CSQLCipher
import Foundation
import SQLCipherKeyManagerTesting
import Synchronization
import Testing

@testable import SQLCipherKeyManager

/// Reads that go on while a rotation by copy re-encrypts the database.
@Suite("Reads through a rotation", .tags(.engine, .core))
struct ReadsThroughRotationTests {
    /// What the rotation's steps saw, recorded by its fault injector (which injects nothing).
    final class CopyWindow: Sendable {
        /// Reads finished so far, and the committed writes, counted by the test's tasks.
        let reads = Atomic(0)
        let writesInside = Atomic(0)
        private let seen = Mutex<[String]>([])
        /// How many reads must finish while the copy holds the write lock.
        let readsWanted: Int
        /// Work the injector runs at the copy's start, on the rotation's thread.
        let atCopy: @Sendable () -> Void

        init(readsWanted: Int, atCopy: @escaping @Sendable () -> Void = {}) {
            self.readsWanted = readsWanted
            self.atCopy = atCopy
        }

        var log: [String] { seen.withLock { $0 } }

        func note(_ line: String) { seen.withLock { $0.append(line) } }

        /// At `.copyingPages`: waits (up to a minute) until `readsWanted` reads have finished
        /// since, and notes the writes so far; at `.swappingDatabase`, notes them again.
        var injector: @Sendable (KeyChangeStep) throws -> Void {
            { [self] step in
                switch step {
                case .copyingPages:
                    let writes = writesInside.load(ordering: .sequentiallyConsistent)
                    atCopy()
                    let start = reads.load(ordering: .sequentiallyConsistent)
                    let deadline = ContinuousClock.now + .seconds(60)
                    while reads.load(ordering: .sequentiallyConsistent) < start + readsWanted
                        && ContinuousClock.now < deadline
                    {
                        usleep(1_000)
                    }
                    let done = reads.load(ordering: .sequentiallyConsistent) - start
                    note("copy: \(done >= readsWanted ? "reads went on" : "reads stopped") writes \(writes)")
                case .swappingDatabase:
                    note("swap: writes \(writesInside.load(ordering: .sequentiallyConsistent))")
                default:
                    break
                }
            }
        }
    }

    /// A manager of `database` whose rotations report their steps to `window`.
    static func manager(
        _ database: TestDatabase, window: CopyWindow, configuration: DatabaseKeyManager.Configuration = .init()
    ) -> DatabaseKeyManager {
        DatabaseKeyManager(
            databasePath: database.path, providers: KmsRegistry(database.kms), configuration: configuration,
            logger: silentLogger, faultInjector: window.injector)
    }

    @Test(
        "2 readers and a writer through 5 rotations by copy: reads finish while the copy is made, writes wait for it, and no read after a swap misses a committed row"
    )
    func poolReadsThroughRotations() async throws {
        let database = try await TestDatabase(rows: 200)
        let window = CopyWindow(readsWanted: 6)
        let manager = Self.manager(database, window: window)
        let pool = try await manager.openPool(maximumReaders: 2)
        try await ConnectionPoolTests.createLedger(pool)
        let stop = Shared(false)
        /// The last entry whose write returned: every read that starts later must see it.
        let committed = Shared(Int64(0))
        let writer = Task {
            var n: Int64 = 0
            while !stop.value.load(ordering: .sequentiallyConsistent) {
                n += 1
                try await pool.write { [n] db in
                    window.writesInside.add(1, ordering: .sequentiallyConsistent)
                    try db.execute("INSERT INTO entry(n) VALUES (?)", arguments: [.integer(n)])
                    try db.execute("UPDATE total SET sum = sum + ?", arguments: [.integer(n)])
                }
                committed.value.store(n, ordering: .sequentiallyConsistent)
                try await Task.sleep(for: .milliseconds(2))
            }
            return n
        }
        let readers = (0..<2).map { _ in
            Task {
                var stale = 0
                while !stop.value.load(ordering: .sequentiallyConsistent) {
                    let floor = committed.value.load(ordering: .sequentiallyConsistent)
                    let snapshot = try await ConnectionPoolTests.ledger(pool)
                    #expect(snapshot.sum == snapshot.total, "a read saw a half-made write")
                    #expect(snapshot.sum == snapshot.count * (snapshot.count + 1) / 2)
                    if snapshot.count < floor { stale += 1 }
                    window.reads.add(1, ordering: .sequentiallyConsistent)
                }
                return stale
            }
        }
        for round in 1...5 {
            // Some writes before each rotation, so that the WAL holds frames to copy back.
            let before = committed.value.load(ordering: .sequentiallyConsistent)
            try await Self.waitUntil { committed.value.load(ordering: .sequentiallyConsistent) >= before + 5 }
            let oldKey = try await database.currentKey()
            #expect(try await manager.rotateKey().version == round + 1)
            try await Self.expectOnlyNewKeyOnDisk(database, round: round, oldKey: oldKey, pool: pool)
            // The writer goes on after the swap (waited for, up to a minute on a loaded machine).
            let last = committed.value.load(ordering: .sequentiallyConsistent)
            try await Self.waitUntil { committed.value.load(ordering: .sequentiallyConsistent) > last }
            #expect(
                committed.value.load(ordering: .sequentiallyConsistent) > last, "writes went on after rotation \(round)"
            )
        }
        stop.value.store(true, ordering: .sequentiallyConsistent)
        let last = try await writer.value
        for reader in readers {
            #expect(try await reader.value == 0, "a read started after a write returned did not see it")
        }
        let log = window.log
        #expect(log.count == 10)
        for (copy, swap) in zip(log.indices.filter { $0 % 2 == 0 }, log.indices.filter { $0 % 2 == 1 }) {
            #expect(log[copy].hasPrefix("copy: reads went on"), "\(log[copy])")
            // No write ran between the copy's start and the swap.
            #expect(log[copy].dropFirst("copy: reads went on ".count) == log[swap].dropFirst("swap: ".count))
        }
        let final = try await ConnectionPoolTests.ledger(pool)
        #expect(final.count == last && final.sum == last * (last + 1) / 2)
        await pool.close()
        try await database.expectIntact()
    }

    @Test(
        "synchronous reads on threads of their own go on through rotations by copy, see every write that returned before them, and fail as closed after close()"
    )
    func synchronousReadsThroughRotations() async throws {
        let database = try await TestDatabase(rows: 100)
        let window = CopyWindow(readsWanted: 4)
        let manager = Self.manager(database, window: window)
        let pool = try await manager.openPool(maximumReaders: 2)
        let stop = Shared(false)
        let committed = Shared(Int64(0))
        let stale = Shared(0)
        let failures = Mutex<[String]>([])
        let finished = DispatchGroup()
        for _ in 0..<3 {
            // Three threads on two readers: one of them waits for a reader, blocking.
            finished.enter()
            Thread {
                defer { finished.leave() }
                while !stop.value.load(ordering: .sequentiallyConsistent) {
                    let floor = committed.value.load(ordering: .sequentiallyConsistent)
                    do {
                        let count = try pool.readSynchronously { db in
                            try db.fetchAll("SELECT count(*) FROM item")[0][0].integerValue ?? -1
                        }
                        if count < 100 + floor { stale.value.add(1, ordering: .sequentiallyConsistent) }
                        window.reads.add(1, ordering: .sequentiallyConsistent)
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                        return
                    }
                }
            }.start()
        }
        for round in 1...3 {
            let n = Int64(round)
            try await pool.write { db in
                try db.execute("INSERT INTO item(id, body) VALUES (?, 'x')", arguments: [.integer(1000 + n)])
            }
            committed.value.store(n, ordering: .sequentiallyConsistent)
            #expect(try await manager.rotateKey().version == round + 1)
        }
        stop.value.store(true, ordering: .sequentiallyConsistent)
        await withCheckedContinuation { continuation in
            finished.notify(queue: .global()) { continuation.resume() }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(stale.value.load(ordering: .sequentiallyConsistent) == 0)
        #expect(window.log.filter { $0.hasPrefix("copy: reads went on") }.count == 3, "\(window.log)")
        #expect(
            try pool.readSynchronously { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(103))
        await pool.close()
        #expect(throws: DBKeyError.self) { try pool.readSynchronously { _ in 1 } }
    }

    @Test(
        "a rotation that cannot take the exclusive lock (another handle holds the database) fails as in use, changes nothing, and the pool whose writes it held writes again"
    )
    func exclusiveLockRefusedAfterWritesHeld() async throws {
        let database = try await TestDatabase(rows: 20)
        let window = CopyWindow(readsWanted: 0)
        let manager = Self.manager(database, window: window)
        let pool = try await manager.openPool()
        // A connection of its own holds the shared lock: the pool lets go of its lock, and the
        // rotation still cannot take the exclusive one.
        let other = try await database.manager().open()
        let keyBefore = try contents(database.path + ".key")
        await expectError(.databaseInUse) { try await manager.rotateKey(wait: .milliseconds(100)) }
        #expect(window.log.isEmpty, "the copy never started")
        #expect(try contents(database.path + ".key") == keyBefore)
        try await pool.write { db in try db.execute("DELETE FROM item WHERE id = 1") }
        #expect(try await pool.read { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(19))
        #expect(try pool.readSynchronously { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(19))
        other.close()
        #expect(try await manager.rotateKey().version == 2, "with the other handle closed, the rotation runs")
        await pool.close()
    }

    /// Waits until `condition` holds, checking every 5 ms, for up to a minute (a loaded machine).
    static func waitUntil(_ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while !condition() && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// The database file and its WAL as they are on disk (copied while the pool's writer is
    /// held, so that no checkpoint runs meanwhile): the new key opens them, every page and WAL
    /// frame authenticates, and the old key opens nothing.
    static func expectOnlyNewKeyOnDisk(
        _ database: TestDatabase, round: Int, oldKey: SecureBuffer, pool: ConnectionPool
    ) async throws {
        let copy = database.directory.file("on-disk-\(round).db")
        let committed = try await pool.writeWithoutTransaction { db in
            for suffix in ["", "-wal"] where FileManager.default.fileExists(atPath: database.path + suffix) {
                try FileManager.default.copyItem(atPath: database.path + suffix, toPath: copy + suffix)
            }
            return try db.fetchAll("SELECT count(*) FROM entry")[0][0]
        }
        let newKey = try await database.currentKey()
        let cipher = try database.manager().load().cipher
        try await offPool {
            let db = try DatabaseConnection.open(path: copy, keying: .raw(newKey, cipher), proving: true)
            defer { db.close() }
            #expect(try db.integrityCheck() == [], "a page or WAL frame is not under the new key")
            #expect(try db.fetchAll("SELECT count(*) FROM entry")[0][0] == committed)
        }
        #expect(throws: DBKeyError.self, "the old key opens the file after rotation \(round)") {
            try DatabaseConnection.open(path: copy, keying: .raw(oldKey, cipher), proving: true).close()
        }
    }

    @Test(
        "a coordinator whose reads go on keeps its read handle through the copy, closes it for the swap, and reopens on the new key; one that does not closes at the start"
    )
    func coordinatorReadsThroughRotation() async throws {
        let database = try await TestDatabase(rows: 40, wal: true)
        let store = Shared<Int>(0)
        let keyedNew = Shared<Int>(0)
        let reading = Mutex<HandleStore?>(nil)
        let window = CopyWindow(readsWanted: 0) {
            // On the rotation's thread, inside the copy's window: the app's handle reads.
            let count = try? reading.withLock { try $0?.count() }
            let opened = reading.withLock { $0?.countOnNewHandle() }
            store.value.store(Int(count ?? -1), ordering: .sequentiallyConsistent)
            keyedNew.value.store(Int(opened ?? -1), ordering: .sequentiallyConsistent)
        }
        let manager = Self.manager(database, window: window)
        let app = HandleStore(manager: manager, readOnly: true, readsGoOn: true)
        try await app.reopen()
        reading.withLock { $0 = app }
        let registration = manager.register(app)
        #expect(try await manager.rotateKey().version == 2)
        #expect(store.value.load(ordering: .sequentiallyConsistent) == 40, "the app's read handle read during the copy")
        #expect(keyedNew.value.load(ordering: .sequentiallyConsistent) == 40, "the lent key keyed a new handle")
        #expect(app.events == ["writers closed v1", "closed v1", "reopened v2"])
        #expect(try app.count() == 40)
        registration.cancel()
        app.close()

        // A coordinator that keeps the default closes everything when the rotation starts.
        let closing = HandleStore(manager: manager, readOnly: true)
        try await closing.reopen()
        reading.withLock { $0 = closing }
        let second = manager.register(closing)
        #expect(try await manager.rotateKey().version == 3)
        #expect(store.value.load(ordering: .sequentiallyConsistent) == -1, "the handle was closed before the copy")
        #expect(closing.events == ["closed v2", "reopened v3"])
        #expect(try closing.count() == 40)
        second.cancel()
        closing.close()
        try await database.expectIntact()
    }

    @Test(
        "a read holding a snapshot older than the last write keeps the WAL from being copied back: the rotation waits for it, or fails as in use and changes nothing"
    )
    func oldSnapshotDuringCopy() async throws {
        let database = try await TestDatabase(rows: 30)
        let manager = Self.manager(
            database, window: CopyWindow(readsWanted: 0), configuration: .init(quiesceTimeout: .milliseconds(300)))
        let pool = try await manager.openPool()
        let readStarted = DispatchSemaphore(value: 0)
        let endRead = DispatchSemaphore(value: 0)
        let longRead = Task {
            try await pool.read { db in
                let before = try db.fetchAll("SELECT count(*) FROM item")[0][0]
                readStarted.signal()
                _ = endRead.wait(timeout: .now() + 300)
                // The snapshot is the one the read began with.
                #expect(try db.fetchAll("SELECT count(*) FROM item")[0][0] == before)
                return before
            }
        }
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                readStarted.wait()
                continuation.resume()
            }
        }
        // A write after the read's snapshot: its frames stay in the WAL while the read lasts.
        try await pool.write { db in try db.execute("DELETE FROM item WHERE id <= 10") }
        let keyBefore = try contents(database.path + ".key")
        await expectError(.databaseInUse, containing: ["older snapshot"]) { try await manager.rotateKey() }
        #expect(try contents(database.path + ".key") == keyBefore)
        #expect(!FileManager.default.fileExists(atPath: database.path + ".dbkey-rotating"))
        endRead.signal()
        #expect(try await longRead.value == .integer(30))
        // With the read over, the rotation copies the WAL back and keeps the write.
        #expect(try await manager.rotateKey().version == 2)
        #expect(try await pool.read { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(20))
        await pool.close()
    }

    @Test(
        "a read that outlasts the copy's wait for the swap stops the rotation before anything is journaled; reads and writes go on"
    )
    func longReadAtTheSwap() async throws {
        let database = try await TestDatabase(rows: 50)
        let readStarted = DispatchSemaphore(value: 0)
        let endRead = DispatchSemaphore(value: 0)
        let pool = Mutex<ConnectionPool?>(nil)
        let longRead = Mutex<Task<SQLValue, any Error>?>(nil)
        let window = CopyWindow(readsWanted: 0) {
            // During the copy a read starts that runs until the test ends it.
            guard let pool = pool.withLock({ $0 }) else { return }
            longRead.withLock {
                $0 = Task {
                    try await pool.read { db in
                        readStarted.signal()
                        _ = endRead.wait(timeout: .now() + 300)
                        return try db.fetchAll("SELECT count(*) FROM item")[0][0]
                    }
                }
            }
            // Bounded: a pool that held its reads would never start it.
            _ = readStarted.wait(timeout: .now() + 60)
        }
        let manager = Self.manager(database, window: window, configuration: .init(quiesceTimeout: .milliseconds(300)))
        let opened = try await manager.openPool()
        pool.withLock { $0 = opened }
        let keyBefore = try contents(database.path + ".key")
        await expectError(.databaseInUse, containing: ["quiesceTimeout"]) { try await manager.rotateKey() }
        #expect(window.log == ["copy: reads went on writes 0"], "the rotation stopped before the swap")
        #expect(try contents(database.path + ".key") == keyBefore)
        #expect(!FileManager.default.fileExists(atPath: database.path + ".dbkey-rotating"), "the copy was removed")
        endRead.signal()
        #expect(try await longRead.withLock({ $0 })?.value == .integer(50))
        try await opened.write { db in try db.execute("DELETE FROM item WHERE id = 1") }
        #expect(try await opened.read { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(49))
        pool.withLock { $0 = nil }
        await opened.close()
        #expect(try manager.load().version == 1)
    }
}
