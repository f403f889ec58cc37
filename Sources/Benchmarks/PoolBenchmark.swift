import CSQLCipher
import Foundation
import Logging
import SQLCipherKeyManager
import Synchronization

/// The connection pool: UI-shaped reads through it against bare C handles in as many threads,
/// and the pause readers see while the key is rotated online against the same rotation with
/// nothing open.
enum PoolBenchmark {
    /// One read: the next 100 rows of a list, as a screen of a UI fetches them.
    static let page = "SELECT id, title, updated FROM note WHERE id > ? ORDER BY id LIMIT 100"
    static let notes = 20_000
    static let readsPerReader = 3000

    static func run(workdir: String, sizesMB: [Int]) async throws -> [ResultRow] {
        try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
        var rows = try await reads(workdir: workdir)
        for megabytes in sizesMB {
            rows.append(try await pause(workdir: workdir, megabytes: megabytes))
        }
        return rows
    }

    // MARK: - Reads

    private static func reads(workdir: String) async throws -> [ResultRow] {
        let path = workdir + "/pool.db"
        removeDatabase(path)
        let manager = LocalDbKeyManager(
            databasePath: path, kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
        let pool = try await manager.openPool(maximumReaders: 4)
        try await pool.write { db in
            try db.execute("CREATE TABLE note(id INTEGER PRIMARY KEY, title TEXT NOT NULL, updated REAL NOT NULL)")
            try db.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) INSERT INTO note(title, updated) SELECT printf('note %d: %s', x, hex(randomblob(40))), x * 1.5 FROM c",
                arguments: [.integer(Int64(notes))])
        }
        let text = try keyText(try await manager.getOrCreateKey())
        var result: [ResultRow] = []
        for readers in [1, 2, 4] {
            let times = try await Measure.alternating(
                5,
                { try await poolReads(pool, readers: readers) },
                { bareReads(path, key: text, readers: readers) })
            let total = Double(readers * readsPerReader)
            let ratio = Measure.seconds(times.a) / Measure.seconds(times.b)
            result.append(
                .init(
                    measurement: "100-row page reads, \(readers) reader\(readers == 1 ? "" : "s") (pool)",
                    ours: String(format: "%.0f reads/s", total / Measure.seconds(times.a)),
                    baseline: String(
                        format: "%.0f reads/s bare C, %d thread%@", total / Measure.seconds(times.b),
                        readers, readers == 1 ? "" : "s"),
                    ratio: String(format: "%.2f×", ratio), target: "≤ 1.2×", met: ratio <= 1.2))
        }
        await pool.close()
        return result
    }

    /// `readers` tasks, each reading `readsPerReader` pages through the pool.
    private static func poolReads(_ pool: ConnectionPool, readers: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for reader in 0..<readers {
                group.addTask {
                    for read in 0..<readsPerReader {
                        let after = Int64((read * 97 + reader * 31) % (notes - 100))
                        let rows = try await pool.read { db in try db.fetchAll(page, arguments: [.integer(after)]) }
                        precondition(rows.count == 100)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// `readers` threads, each with its own handle keyed in C and one prepared statement,
    /// reading the same pages into Swift values.
    private static func bareReads(_ path: String, key: SecureBuffer, readers: Int) {
        let done = DispatchGroup()
        for reader in 0..<readers {
            done.enter()
            Thread.detachNewThread {
                bareReader(path, key: key, reader: reader)
                done.leave()
            }
        }
        done.wait()
    }

    private static func bareReader(_ path: String, key: SecureBuffer, reader: Int) {
        var db: OpaquePointer?
        precondition(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK)
        key.withUnsafeBytes { precondition(sqlite3_key(db, $0.baseAddress, Int32($0.count)) == SQLITE_OK) }
        precondition(sqlite3_exec(db, "PRAGMA cipher_page_size = 4096", nil, nil, nil) == SQLITE_OK)
        var statement: OpaquePointer?
        precondition(sqlite3_prepare_v2(db, page, -1, &statement, nil) == SQLITE_OK)
        for read in 0..<readsPerReader {
            let after = Int64((read * 97 + reader * 31) % (notes - 100))
            sqlite3_bind_int64(statement, 1, after)
            var values: [(Int64, String, Double)] = []
            values.reserveCapacity(100)
            while sqlite3_step(statement) == SQLITE_ROW {
                values.append(
                    (
                        sqlite3_column_int64(statement, 0), String(cString: sqlite3_column_text(statement, 1)),
                        sqlite3_column_double(statement, 2)
                    ))
            }
            precondition(values.count == 100)
            sqlite3_reset(statement)
        }
        sqlite3_finalize(statement)
        sqlite3_close(db)
    }

    // MARK: - Pause during an online rotation

    /// Read latencies while the key of a database of `megabytes` MB is rotated with a pool open
    /// and 4 readers and a writer busy, against the same rotation with nothing open.
    private static func pause(workdir: String, megabytes: Int) async throws -> ResultRow {
        let path = workdir + "/online.db"
        let manager = try await managedDatabase(path, megabytes: megabytes, pageSize: 4096)
        // Both rotations in WAL mode, the mode a pool puts the database in.
        await (try await manager.openPool()).close()
        let repetitions = megabytes <= 512 ? 3 : 1
        var offline: [Duration] = []
        var online: [(rotation: Duration, latencies: [Duration])] = []
        for _ in 0..<repetitions {
            sync()
            offline.append(try await Measure.time { try await manager.rotateKey() })
            sync()
            online.append(try await onlineRotation(manager))
        }
        let worst = online.map { $0.latencies.max() ?? .zero }.sorted()[online.count / 2]
        let latencies = online.flatMap(\.latencies).sorted()
        let p50 = latencies[latencies.count / 2]
        let p99 = latencies[min(latencies.count - 1, latencies.count * 99 / 100)]
        let rekey = Measure.median(offline)
        let ratio = Measure.seconds(worst) / Measure.seconds(rekey)
        return .init(
            measurement: "pause seen by readers, online rotation of \(megabytes) MB (4 readers + writer)",
            ours: String(
                format: "max %.2f s (p50 %.2f ms, p99 %.0f ms)", Measure.seconds(worst), Measure.seconds(p50) * 1e3,
                Measure.seconds(p99) * 1e3),
            baseline: String(format: "%.2f s rotation, nothing open", Measure.seconds(rekey)),
            ratio: String(format: "%.2f×", ratio), target: "≤ 1.1×", met: ratio <= 1.1)
    }

    /// One online rotation with 4 readers and a writer running; the latency of every read that
    /// overlapped it.
    private static func onlineRotation(_ manager: LocalDbKeyManager) async throws -> (
        rotation: Duration, latencies: [Duration]
    ) {
        let pool = try await manager.openPool(maximumReaders: 4)
        let clock = ContinuousClock()
        let stop = StopFlag()
        let rotating = Task {
            defer { stop.set() }
            try await Task.sleep(for: .milliseconds(200))
            let start = clock.now
            try await manager.rotateKey()
            return (start, clock.now)
        }
        let readers = (0..<4).map { reader in
            Task {
                var latencies: [(start: ContinuousClock.Instant, end: ContinuousClock.Instant)] = []
                var read = 0
                while !stop.isSet {
                    let start = clock.now
                    let after = Int64(read * 7 + reader)
                    _ = try await pool.read { db in
                        try db.fetchAll(
                            "SELECT id FROM t WHERE id > ? ORDER BY id LIMIT 100", arguments: [.integer(after)])
                    }
                    latencies.append((start, clock.now))
                    read += 1
                }
                return latencies
            }
        }
        let writer = Task {
            var n: Int64 = 0
            while !stop.isSet {
                n += 1
                try await pool.write { [n] db in
                    try db.execute("UPDATE t SET body = randomblob(100) WHERE id = ?", arguments: [.integer(n)])
                }
            }
        }
        let (start, end) = try await rotating.value
        try await writer.value
        var overlapping: [Duration] = []
        for reader in readers {
            for read in try await reader.value where read.end > start && read.start < end {
                overlapping.append(read.end - read.start)
            }
        }
        await pool.close()
        return (end - start, overlapping)
    }
}

/// Set once, read by the benchmark's loops.
final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}
