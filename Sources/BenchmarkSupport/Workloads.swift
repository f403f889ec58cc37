import CSQLCipher
import Foundation
import Logging
import SQLCipherKeyManager
import Synchronization

/// A UI's reads, as the pool benchmarks run them through each stack: pages of 100 rows of a
/// list of notes, and bare C handles reading the same pages for the baseline.
public enum NotePages {
    /// One read: the next 100 rows of a list, as a screen of a UI fetches them.
    public static let page = "SELECT id, title, updated FROM note WHERE id > ? ORDER BY id LIMIT 100"
    public static let notes = 20_000
    public static let readsPerReader = 3000
    /// The table, then its rows (one argument: ``notes``).
    public static let schema = "CREATE TABLE note(id INTEGER PRIMARY KEY, title TEXT NOT NULL, updated REAL NOT NULL)"
    public static let fill =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) INSERT INTO note(title, updated) SELECT printf('note %d: %s', x, hex(randomblob(40))), x * 1.5 FROM c"

    /// The id after which reader `reader`'s read number `read` starts.
    public static func after(read: Int, reader: Int) -> Int64 {
        Int64((read * 97 + reader * 31) % (notes - 100))
    }

    /// `readers` tasks, each making ``readsPerReader`` reads through `read`, which returns how
    /// many rows it read.
    public static func concurrentReads(readers: Int, _ read: @escaping @Sendable (Int64) async throws -> Int)
        async throws
    {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for reader in 0..<readers {
                group.addTask {
                    for index in 0..<readsPerReader {
                        let rows = try await read(after(read: index, reader: reader))
                        precondition(rows == 100)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    /// `readers` threads, each with its own handle keyed in C and one prepared statement,
    /// reading the same pages into Swift values.
    public static func bareReads(_ path: String, key: SecureBuffer, readers: Int) {
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
            sqlite3_bind_int64(statement, 1, after(read: read, reader: reader))
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

    /// The raw-key text of a managed database's key, for the bare C baseline; the key's lock is
    /// released at once so that rotations can run.
    public static func keyText(_ key: DatabaseKey) throws -> SecureBuffer {
        defer { key.release() }
        return try key.withRawKeyText { SecureBuffer(copying: $0) }
    }
}

/// The pause a stack's readers see while the key is rotated online, against the same rotation
/// with nothing open.
public enum OnlineRotation {
    /// What the readers and the writer run through: opened before each online rotation.
    public struct Stack: Sendable {
        /// Reads the 100 rows of `t` after an id.
        public let read: @Sendable (Int64) async throws -> Void
        /// Rewrites one row of `t`.
        public let write: @Sendable (Int64) async throws -> Void
        public let close: @Sendable () async throws -> Void

        public init(
            read: @escaping @Sendable (Int64) async throws -> Void,
            write: @escaping @Sendable (Int64) async throws -> Void,
            close: @escaping @Sendable () async throws -> Void
        ) {
            self.read = read
            self.write = write
            self.close = close
        }
    }

    /// The worst pause of `readers` readers (and a writer) through `open`'s stack, over a few
    /// online rotations of a database of `megabytes` MB, against the median rotation with
    /// nothing open.
    public static func pauseRow(
        _ label: String, manager: LocalDbKeyManager, megabytes: Int, readers: Int,
        open: @Sendable () async throws -> Stack
    ) async throws -> BenchmarkRow {
        let repetitions = megabytes <= 512 ? 3 : 1
        var offline: [Duration] = []
        var online: [[Duration]] = []
        for _ in 0..<repetitions {
            sync()
            offline.append(try await Measure.time { try await manager.rotateKey() })
            sync()
            online.append(try await latencies(manager, readers: readers, stack: try await open()))
        }
        let worst = online.map { $0.max() ?? .zero }.sorted()[online.count / 2]
        let all = online.flatMap { $0 }.sorted()
        let p50 = all[all.count / 2]
        let p99 = all[min(all.count - 1, all.count * 99 / 100)]
        let rotation = Measure.median(offline)
        let ratio = Measure.seconds(worst) / Measure.seconds(rotation)
        return .init(
            measurement: "pause seen by readers, online rotation of \(megabytes) MB (\(label))",
            ours: String(
                format: "max %.2f s (p50 %.2f ms, p99 %.0f ms)", Measure.seconds(worst), Measure.seconds(p50) * 1e3,
                Measure.seconds(p99) * 1e3),
            baseline: String(format: "%.2f s rotation, nothing open", Measure.seconds(rotation)),
            ratio: String(format: "%.2f×", ratio), target: "≤ 1.1×", met: ratio <= 1.1)
    }

    /// One online rotation with the readers and a writer running; the latency of every read
    /// that overlapped it.
    private static func latencies(_ manager: LocalDbKeyManager, readers: Int, stack: Stack) async throws -> [Duration] {
        let clock = ContinuousClock()
        let stop = StopFlag()
        let rotating = Task {
            defer { stop.set() }
            try await Task.sleep(for: .milliseconds(200))
            let start = clock.now
            try await manager.rotateKey()
            return (start, clock.now)
        }
        let readerTasks = (0..<readers).map { reader in
            Task {
                var reads: [(start: ContinuousClock.Instant, end: ContinuousClock.Instant)] = []
                var read = 0
                while !stop.isSet {
                    let start = clock.now
                    try await stack.read(Int64(read * 7 + reader))
                    reads.append((start, clock.now))
                    read += 1
                }
                return reads
            }
        }
        let writer = Task {
            var n: Int64 = 0
            while !stop.isSet {
                n += 1
                try await stack.write(n)
            }
        }
        let (start, end) = try await rotating.value
        try await writer.value
        var overlapping: [Duration] = []
        for reader in readerTasks {
            for read in try await reader.value where read.end > start && read.start < end {
                overlapping.append(read.end - read.start)
            }
        }
        try await stack.close()
        return overlapping
    }

    /// A managed database filled to about `megabytes` MB with 3000-byte rows in `t(id, body)`.
    public static func managedDatabase(_ path: String, megabytes: Int, pageSize: Int, logger: Logger) async throws
        -> LocalDbKeyManager
    {
        removeDatabase(path)
        let manager = LocalDbKeyManager(
            databasePath: path, kms: try LocalKms.fromEnvironment(logger: logger),
            configuration: .init(pageSize: pageSize), logger: logger)
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body BLOB)")
        let rowsNeeded = megabytes * 1_000_000 / 3000
        try db.execute(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) INSERT INTO t(body) SELECT randomblob(3000) FROM c",
            arguments: [.integer(Int64(rowsNeeded))])
        db.close()
        return manager
    }

    /// Removes a database and the files beside it.
    public static func removeDatabase(_ path: String) {
        for suffix in ["", ".key", ".key.lock", "-journal", "-wal", "-shm"] {
            try? FileManager.default.removeItem(atPath: path + suffix)
        }
    }
}

/// Set once, read by the benchmark's loops.
public final class StopFlag: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public var isSet: Bool { flag.load(ordering: .relaxed) }
    public func set() { flag.store(true, ordering: .relaxed) }
}
