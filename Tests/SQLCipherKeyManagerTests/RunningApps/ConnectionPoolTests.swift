import CSQLCipher
import Foundation
import SQLCipherKeyManagerTesting
import Synchronization
import Testing

@testable import SQLCipherKeyManager

/// The connection pool, and key changes made while it runs.
@Suite("Connection pool and online rotation", .tags(.engine, .core))
struct ConnectionPoolTests {
    /// Creates `entry` (1...n) and `total` (their sum), which the writer keeps in step.
    static func createLedger(_ pool: ConnectionPool) async throws {
        try await pool.write { db in
            try db.execute(
                "CREATE TABLE entry(n INTEGER PRIMARY KEY); CREATE TABLE total(sum INTEGER NOT NULL); INSERT INTO total VALUES (0)"
            )
        }
    }

    /// Commits entry `n` and adds it to the total, in one transaction.
    static func commit(_ n: Int64, to pool: ConnectionPool) async throws {
        try await pool.write { db in
            try db.execute("INSERT INTO entry(n) VALUES (?)", arguments: [.integer(n)])
            try db.execute("UPDATE total SET sum = sum + ?", arguments: [.integer(n)])
        }
    }

    /// One snapshot: the number of entries, their sum, and the total.
    static func ledger(_ pool: ConnectionPool) async throws -> (count: Int64, sum: Int64, total: Int64) {
        try await pool.read { db in
            let count = try db.fetchAll("SELECT count(*), coalesce(sum(n), 0) FROM entry")[0]
            let total = try db.fetchAll("SELECT sum FROM total")[0][0]
            return (count[0].integerValue ?? -1, count[1].integerValue ?? -1, total.integerValue ?? -2)
        }
    }

    /// Whether the database's lock is free within a second. A child process another test
    /// forks holds a copy of every descriptor until it execs, a released lock's included — the
    /// reason `DatabaseLock.acquire` polls too.
    static func lockReleased(_ path: String) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(1)
        while DatabaseLock.isHeld(databasePath: path) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        return !DatabaseLock.isHeld(databasePath: path)
    }

    @Test(
        "4 readers and a writer run through 5 online rotations: no errors, every committed row, consistent snapshots, and only the new key opens the file alone"
    )
    func onlineRotations() async throws {
        let database = try await TestDatabase(rows: 200)
        let manager = database.manager()
        let pool = try await manager.openPool(maximumReaders: 4)
        try await Self.createLedger(pool)
        let stop = Shared(false)
        let committed = Shared(Int64(0))
        let writer = Task {
            var n: Int64 = 0
            while !stop.value.load(ordering: .relaxed) {
                n += 1
                try await Self.commit(n, to: pool)
                committed.value.store(n, ordering: .relaxed)
                // Paced, as an app's work is: flat-out loops would starve the tests beside it.
                try await Task.sleep(for: .milliseconds(1))
            }
            return n
        }
        let readers = (0..<4).map { _ in
            Task {
                var reads = 0
                while !stop.value.load(ordering: .relaxed) {
                    let snapshot = try await Self.ledger(pool)
                    #expect(snapshot.sum == snapshot.total, "a read saw a half-made write")
                    #expect(snapshot.sum == snapshot.count * (snapshot.count + 1) / 2, "entries are not 1...n")
                    reads += 1
                    try await Task.sleep(for: .milliseconds(1))
                }
                return reads
            }
        }
        let cipher = try manager.load().cipher
        for round in 1...5 {
            try await Task.sleep(for: .milliseconds(150))
            let oldKey = try await database.currentKey()
            let before = committed.value.load(ordering: .relaxed)
            let rotated = try await manager.rotateKey()
            #expect(rotated.version == round + 1)
            let newKey = try await database.currentKey()
            // The database file alone, as it is after the rotation's checkpoint: copied while
            // the pool's writer is held, so that no checkpoint runs meanwhile.
            let copy = database.directory.file("copy-\(round).db")
            try await pool.writeWithoutTransaction { _ in
                try FileManager.default.copyItem(atPath: database.path, toPath: copy)
            }
            #expect(try await sqlcipherShellOpensDatabase(copy, key: newKey, cipher: cipher))
            #expect(try await !sqlcipherShellOpensDatabase(copy, key: oldKey, cipher: cipher))
            try await Task.sleep(for: .milliseconds(100))
            #expect(committed.value.load(ordering: .relaxed) > before, "the writer went on after rotation \(round)")
        }
        stop.value.store(true, ordering: .relaxed)
        let last = try await writer.value
        for reader in readers {
            #expect(try await reader.value > 0)
        }
        let final = try await Self.ledger(pool)
        #expect(final.count == last && final.sum == last * (last + 1) / 2)
        await pool.close()
        #expect(try await Self.lockReleased(database.path), "close released the lock")
        try await database.expectIntact()
    }

    @Test(
        "a rotation that cannot quiesce (a long read) fails as in use and changes nothing; the read and the pool go on")
    func quiesceTimeout() async throws {
        let database = try await TestDatabase(rows: 50)
        let manager = DatabaseKeyManager(
            databasePath: database.path, kms: database.kms,
            configuration: .init(quiesceTimeout: .milliseconds(300)), logger: silentLogger)
        let pool = try await manager.openPool()
        let keyBefore = try contents(database.path + ".key")
        // The read runs until the test lets it end, or five minutes pass: a rotation that waited for
        // it would then find it ended. (Under a loaded CI run the rotation took 52 s to give up.)
        let readStarted = DispatchSemaphore(value: 0)
        let endRead = DispatchSemaphore(value: 0)
        let readDone = Shared(false)
        let longRead = Task {
            try await pool.read { db in
                readStarted.signal()
                _ = endRead.wait(timeout: .now() + 300)
                readDone.value.store(true, ordering: .relaxed)
                return try db.fetchAll("SELECT count(*) FROM item")[0][0]
            }
        }
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                readStarted.wait()
                continuation.resume()
            }
        }
        await expectError(.databaseInUse, containing: ["quiesceTimeout"]) { try await manager.rotateKey() }
        let readEnded = readDone.value.load(ordering: .relaxed)
        endRead.signal()
        #expect(!readEnded, "the rotation gave up at its timeout, before the read ended")
        #expect(try contents(database.path + ".key") == keyBefore)
        #expect(try await longRead.value == .integer(50))
        try await pool.write { db in try db.execute("DELETE FROM item WHERE id = 1") }
        #expect(try await pool.read { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(49))
        #expect(try manager.load().version == 1)
        await pool.close()
    }

    @Test("the writer commits with synchronous FULL by default and NORMAL when asked, before and after a rotation")
    func synchronousSetting() async throws {
        let database = try await TestDatabase(rows: 10)
        let manager = database.manager()
        @Sendable func setting(_ pool: ConnectionPool) async throws -> SQLValue {
            try await pool.writeWithoutTransaction { db in try db.fetchAll("PRAGMA synchronous")[0][0] }
        }
        let full = try await manager.openPool()
        #expect(full.synchronous == .full)
        #expect(try await setting(full) == .integer(2))
        await full.close()
        let normal = try await manager.openPool(synchronous: .normal)
        #expect(try await setting(normal) == .integer(1))
        try await manager.rotateKey()
        #expect(try await setting(normal) == .integer(1), "the writer reopened after the rotation keeps it")
        await normal.close()
    }

    @Test(
        "fetch runs one statement with no BEGIN: a write that commits while its rows are read is not among them; fetchSynchronously too; two statements are refused before either runs"
    )
    func fetchWithoutTransaction() async throws {
        let database = try await TestDatabase(rows: 50, wal: true)
        let pool = try await database.manager().openPool(maximumReaders: 1)
        /// The one reader's handle, to ask SQLite whether a transaction is open.
        struct Handle: @unchecked Sendable { let pointer: OpaquePointer }
        let reader = try await pool.read { db in Handle(pointer: try db.liveHandle()) }
        #expect(try await pool.read { _ in sqlite3_get_autocommit(reader.pointer) } == 0, "read opens a transaction")
        let autocommit = Mutex<[Int32]>([])
        let written = DispatchSemaphore(value: 0)
        let ids = try await pool.fetch("SELECT id FROM item ORDER BY id") { row in
            if row.integer(0) == 1 {
                autocommit.withLock { $0.append(sqlite3_get_autocommit(reader.pointer)) }
                // A write commits while the statement is between its first and second rows.
                Task {
                    try await pool.write { db in try db.execute("INSERT INTO item(id, body) VALUES (1000, 'late')") }
                    written.signal()
                }
                #expect(written.wait(timeout: .now() + 30) == .success, "the write committed beside the statement")
            }
            return row.integer(0)
        }
        #expect(autocommit.withLock { $0 } == [1], "no transaction was open while the rows were read")
        #expect(ids == Array(1...50), "one snapshot: the rows as they were when the statement began")
        let count = try await pool.fetch("SELECT count(*) FROM item") { $0.integer(0) }
        #expect(count == [51])
        let synchronousIDs = try await Task.detached {
            try pool.fetchSynchronously("SELECT id FROM item WHERE id > ? ORDER BY id", arguments: [.integer(49)]) {
                row in
                autocommit.withLock { $0.append(sqlite3_get_autocommit(reader.pointer)) }
                return row.integer(0)
            }
        }.value
        #expect(synchronousIDs == [50, 1000])
        #expect(autocommit.withLock { $0 } == [1, 1, 1])
        await expectError(.sqlite, containing: ["one statement", "Nothing was run"]) {
            _ = try await pool.fetch("SELECT 1; SELECT 2") { $0.integer(0) }
        }
        await pool.close()
    }

    @Test("a pool of 2 readers runs 2 reads at once; a third waits; a waiting task is cancelled; all go on")
    func exhaustionAndCancellation() async throws {
        let database = try await TestDatabase(rows: 10)
        let pool = try await database.manager().openPool(maximumReaders: 2)
        let running = Shared(0)
        let mostAtOnce = Shared(0)
        let release = Shared(false)
        @Sendable func blockingRead() async throws -> Int {
            try await pool.read { _ in
                let now = running.value.add(1, ordering: .relaxed).newValue
                _ = mostAtOnce.value.max(now, ordering: .relaxed)
                while !release.value.load(ordering: .relaxed) { Thread.sleep(forTimeInterval: 0.005) }
                _ = running.value.subtract(1, ordering: .relaxed)
                return now
            }
        }
        let first = Task { try await blockingRead() }
        let second = Task { try await blockingRead() }
        while running.value.load(ordering: .relaxed) < 2 { try await Task.sleep(for: .milliseconds(5)) }
        let third = Task { try await blockingRead() }
        let cancelled = Task { try await blockingRead() }
        try await Task.sleep(for: .milliseconds(200))
        #expect(running.value.load(ordering: .relaxed) == 2, "a third read ran while two held both readers")
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        release.value.store(true, ordering: .relaxed)
        _ = try await (first.value, second.value, third.value)
        #expect(mostAtOnce.value.load(ordering: .relaxed) == 2)
        // The cancelled waiter took no reader with it: two reads still run at once.
        release.value.store(false, ordering: .relaxed)
        let again = [Task { try await blockingRead() }, Task { try await blockingRead() }]
        let deadline = ContinuousClock.now + .seconds(10)
        while running.value.load(ordering: .relaxed) < 2 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(running.value.load(ordering: .relaxed) == 2)
        release.value.store(true, ordering: .relaxed)
        for task in again { _ = try await task.value }
        await pool.close()
    }

    @Test("close waits for running work, then releases every handle and the lock; later work fails as closed")
    func closeDuringWork() async throws {
        let database = try await TestDatabase(rows: 10)
        let manager = database.manager()
        let pool = try await manager.openPool()
        #expect(DatabaseLock.isHeld(databasePath: database.path))
        let working = Task {
            try await pool.read { db in
                Thread.sleep(forTimeInterval: 0.4)
                return try db.fetchAll("SELECT count(*) FROM item")[0][0]
            }
        }
        try await Task.sleep(for: .milliseconds(100))
        await pool.close()
        #expect(try await working.value == .integer(10), "the running read finished")
        #expect(try await Self.lockReleased(database.path))
        await expectError(.databaseClosed) { _ = try await pool.read { _ in 1 } }
        await expectError(.databaseClosed) { try await pool.write { _ in } }
        // Nothing holds the database: another process's kind of rotation gets in at once.
        #expect(try await manager.rotateKey().version == 2)
    }

    @Test("a KMS outage during an online rotation changes nothing, and the pool keeps working throughout")
    func kmsOutageDuringOnlineRotation() async throws {
        let kms = MockKms(seed: 16)
        let database = try await TestDatabase(rows: 20, kms: kms, kekId: "k")
        let manager = database.manager()
        let pool = try await manager.openPool()
        try await Self.createLedger(pool)
        let keyBefore = try contents(database.path + ".key")
        kms.failNext(100)
        let writer = Task {
            for n in Int64(1)...200 {
                try await Self.commit(n, to: pool)
            }
        }
        for _ in 0..<3 {
            await expectError(.kmsUnavailable) { try await manager.rotateKey() }
        }
        try await writer.value
        #expect(try contents(database.path + ".key") == keyBefore)
        let ledger = try await Self.ledger(pool)
        #expect(ledger.count == 200 && ledger.sum == ledger.total)
        await pool.close()
    }

    @Test(
        "a rotation request that is not JSON is answered as refused and changes nothing; an app that claims a request and stops is reported as interrupted"
    )
    func rotationRequestFailures() async throws {
        let database = try await TestDatabase(rows: 10)
        let manager = database.manager()
        let (request, claimed, result) = (
            database.path + ".key.rotate-request", database.path + ".key.rotate-claimed",
            database.path + ".key.rotate-result"
        )
        let keyBefore = try contents(database.path + ".key")
        let pool = try await manager.openPool(answeringRotationRequests: .milliseconds(20))
        #expect(
            FileManager.default.createFile(
                atPath: request, contents: Data("not json".utf8), attributes: [.posixPermissions: 0o600]))
        // The app writes its answer, then removes its claim (in that order, so that a requester
        // never sees neither): wait for both.
        let deadline = ContinuousClock.now + .seconds(30)
        while !FileManager.default.fileExists(atPath: result) || FileManager.default.fileExists(atPath: claimed),
            ContinuousClock.now < deadline
        {
            try await Task.sleep(for: .milliseconds(10))
        }
        let answer = try JSONSerialization.jsonObject(with: try contents(result)) as? [String: Any]
        #expect(answer?["status"] as? String == "failed" && answer?["code"] as? String == "invalid-configuration")
        #expect(!FileManager.default.fileExists(atPath: request) && !FileManager.default.fileExists(atPath: claimed))
        #expect(try contents(database.path + ".key") == keyBefore)
        #expect(try await pool.read { db in try db.fetchAll("SELECT count(*) FROM item")[0][0] } == .integer(10))
        await pool.close()

        // A claim no process holds is one doctor reports (checked with no requester running: a
        // requester removes it as soon as it sees it).
        #expect(FileManager.default.createFile(atPath: claimed, contents: Data("{}".utf8)))
        #expect(RotationRequest.claimState(database.path) == .abandoned)
        #expect(await manager.doctor().findings.contains { $0.message.contains("claimed by an app that stopped") })
        #expect(unlink(claimed) == 0)

        // An app claims the request (the rename) and stops before it answers: its claim is
        // held by no process. Reported at once, however long the timeout, and the claim removed.
        let requester = Task { try await manager.requestRotation(timeout: .milliseconds(300)) }
        while !FileManager.default.fileExists(atPath: request) {
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(rename(request, claimed) == 0)
        await expectError(.rotationInterrupted, containing: ["stopped without answering"]) {
            _ = try await requester.value
        }
        #expect(!FileManager.default.fileExists(atPath: claimed))
        #expect(try contents(database.path + ".key") == keyBefore)
    }

    @Test(
        "a result file planted beside the request (a link, another user's, readable by others, not JSON, too large) is not taken for the app's answer"
    )
    func plantedRotationResult() async throws {
        let database = try await TestDatabase(rows: 10)
        let manager = database.manager()
        let (request, result) = (database.path + ".key.rotate-request", database.path + ".key.rotate-result")
        // A directory anyone can write to, as an attacker needs.
        #expect(chmod(database.directory.path, 0o777) == 0)
        let answer = Data(#"{"id": "planted", "status": "failed", "code": "io", "message": "planted"}"#.utf8)
        let elsewhere = database.directory.file("elsewhere.json")
        #expect(
            FileManager.default.createFile(atPath: elsewhere, contents: answer, attributes: [.posixPermissions: 0o600]))
        var plants: [(String, () -> Bool)] = [
            ("a link", { symlink(elsewhere, result) == 0 }),
            (
                "readable by others",
                {
                    FileManager.default.createFile(
                        atPath: result, contents: answer, attributes: [.posixPermissions: 0o644])
                }
            ),
            (
                "not JSON",
                {
                    FileManager.default.createFile(
                        atPath: result, contents: Data("{".utf8), attributes: [.posixPermissions: 0o600])
                }
            ),
            (
                "too large",
                {
                    FileManager.default.createFile(
                        atPath: result, contents: Data(repeating: 0x20, count: 8192),
                        attributes: [.posixPermissions: 0o600])
                }
            ),
        ]
        if getuid() == 0 {
            plants.append(
                (
                    "another user's",
                    {
                        FileManager.default.createFile(
                            atPath: result, contents: answer, attributes: [.posixPermissions: 0o600])
                            && chown(result, 65534, 65534) == 0
                    }
                ))
        }
        for (index, (kind, plant)) in plants.enumerated() {
            let requester = Task { try await manager.requestRotation(timeout: .seconds(30)) }
            while !FileManager.default.fileExists(atPath: request) {
                try await Task.sleep(for: .milliseconds(2))
            }
            #expect(plant(), "\(kind): not planted")
            // The app starts answering only now: the planted file is there first.
            let pool = try await manager.openPool(answeringRotationRequests: .milliseconds(20))
            do {
                let rotated = try await requester.value
                #expect(rotated.version == index + 2, "\(kind)")
            } catch {
                Issue.record("\(kind): the requester took the planted file for an answer: \(error)")
            }
            await pool.close()
        }
        #expect(try manager.load().version == plants.count + 1)
    }

    @Test(
        "an app's coordinator is closed before a rotation and reopened after it, on the new key; one that refuses stops it"
    )
    func coordinator() async throws {
        let database = try await TestDatabase(rows: 30)
        let manager = database.manager()
        let store = HandleStore(manager: manager)
        try await store.reopen()
        let registration = manager.register(store)
        #expect(try store.count() == 30)
        let rotated = try await manager.rotateKey()
        #expect(store.events == ["closed v1", "reopened v2"])
        #expect(rotated.version == 2 && store.keyVersion == 2)
        #expect(try store.count() == 30)

        store.refuses = true
        await expectError(.databaseInUse) { try await manager.rotateKey() }
        #expect(store.events.suffix(1) == ["reopened v2"] && store.keyVersion == 2)
        #expect(try manager.load().version == 2)
        #expect(try store.count() == 30)

        registration.cancel()
        store.close()
        #expect(try await manager.rotateKey().version == 3)
        #expect(store.events.count == 3, "a cancelled registration takes no part")
    }
}

/// A value tasks share (tests only).
final class Shared<Value: AtomicRepresentable & Sendable>: Sendable {
    let value: Atomic<Value>
    init(_ initial: Value) { value = Atomic(initial) }
}

/// An app's own SQLite handle, keyed through the seam, taking part in key changes; read-only
/// and going on through a rotation's copy when asked.
final class HandleStore: KeyChangeCoordinator, @unchecked Sendable {
    private let manager: DatabaseKeyManager
    private let openFlags: Int32
    let readsGoOnDuringRotation: Bool
    private let state = Mutex<(key: KeyLease?, handle: OpaquePointer?, events: [String], refuses: Bool)>(
        (nil, nil, [], false))

    init(manager: DatabaseKeyManager, readOnly: Bool = false, readsGoOn: Bool = false) {
        self.manager = manager
        self.openFlags = readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE
        self.readsGoOnDuringRotation = readsGoOn
    }

    var events: [String] { state.withLock { $0.events } }
    var keyVersion: Int? { state.withLock { $0.key?.version } }
    var refuses: Bool {
        get { state.withLock { $0.refuses } }
        set { state.withLock { $0.refuses = newValue } }
    }

    func reopen() async throws {
        let key = try await manager.leaseKey()
        let handle = try openHandle(keyedWith: key)
        state.withLock {
            $0.key = key
            $0.handle = handle
        }
    }

    private func openHandle(keyedWith key: KeyLease) throws -> OpaquePointer {
        var handle: OpaquePointer?
        guard sqlite3_open_v2(manager.databasePath, &handle, openFlags, nil) == SQLITE_OK, let handle else {
            throw DBKeyError(.io, "cannot open the database")
        }
        do {
            try key.apply(to: handle)
        } catch {
            sqlite3_close_v2(handle)
            throw error
        }
        return handle
    }

    /// The rows, read through a new handle keyed with the store's key; `nil` when the key
    /// cannot key it.
    func countOnNewHandle() -> Int64? {
        guard let key = state.withLock({ $0.key }), let handle = try? openHandle(keyedWith: key) else { return nil }
        defer { sqlite3_close_v2(handle) }
        return try? Self.count(handle)
    }

    private static func count(_ handle: OpaquePointer) throws -> Int64 {
        let db = DatabaseConnection.borrowing(handle)
        defer { db.close() }
        return try db.fetchAll("SELECT count(*) FROM item")[0][0].integerValue ?? -1
    }

    func close() {
        state.withLock {
            sqlite3_close_v2($0.handle)
            $0.handle = nil
            $0.key?.release()
            $0.key = nil
        }
    }

    /// The rows, read through the store's handle; throws when it is closed.
    func count() throws -> Int64 {
        try state.withLock { state in
            guard let handle = state.handle else { throw DBKeyError(.databaseClosed, "the store's handle is closed") }
            return try Self.count(handle)
        }
    }

    func closeWritersForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        // No writer to close: the shared lock goes, the handle and the key stay.
        state.withLock {
            $0.events.append("writers closed v\($0.key?.version ?? 0)")
            $0.key?.releaseLockForRotation()
        }
    }

    func closeForKeyChange(before deadline: ContinuousClock.Instant) async throws {
        if refuses { throw DBKeyError(.databaseInUse, "busy (test)") }
        let version = keyVersion ?? 0
        close()
        state.withLock { $0.events.append("closed v\(version)") }
    }

    func reopenAfterKeyChange() async {
        guard state.withLock({ $0.handle == nil }) else {
            state.withLock { $0.events.append("reopened v\($0.key?.version ?? 0)") }
            return
        }
        do {
            try await reopen()
            state.withLock { $0.events.append("reopened v\($0.key?.version ?? 0)") }
        } catch {
            state.withLock { $0.events.append("reopen failed: \(error)") }
        }
    }
}
