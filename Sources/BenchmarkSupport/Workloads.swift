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

    /// A row of ``page`` as the Swift values a UI shows, as the bare C reader decodes it.
    @Sendable public static func decode(_ row: RowView) -> (Int64, String, Double) {
        (row.integer(0), row.text(1) ?? "", row.real(2))
    }

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

    /// `readers` threads, each making ``readsPerReader`` reads through `read` synchronously,
    /// which returns how many rows it read.
    public static func threadReads(readers: Int, _ read: @escaping @Sendable (Int64) throws -> Int) {
        let done = DispatchGroup()
        for reader in 0..<readers {
            done.enter()
            Thread.detachNewThread {
                for index in 0..<readsPerReader {
                    let rows = try? read(after(read: index, reader: reader))
                    precondition(rows == 100)
                }
                done.leave()
            }
        }
        done.wait()
    }

    /// Reads through bare C handles, one per thread, each keyed in C with one prepared statement,
    /// decoding what ``decode(_:)`` decodes, and returns how long the reads took: the handles
    /// are opened, keyed, their statements prepared and the table read once (their page caches
    /// warm) before the clock starts, and closed after it stops, as a pool's connections are
    /// open and warm before its reads are timed.
    public static func bareReads(_ path: String, key: SecureBuffer, readers: Int) -> Duration {
        let ready = DispatchGroup()
        let start = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        let closed = DispatchGroup()
        for reader in 0..<readers {
            ready.enter()
            done.enter()
            closed.enter()
            Thread.detachNewThread {
                var db: OpaquePointer?
                precondition(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK)
                key.withUnsafeBytes { precondition(sqlite3_key(db, $0.baseAddress, Int32($0.count)) == SQLITE_OK) }
                precondition(sqlite3_exec(db, "PRAGMA cipher_page_size = 4096", nil, nil, nil) == SQLITE_OK)
                var statement: OpaquePointer?
                precondition(sqlite3_prepare_v2(db, page, -1, &statement, nil) == SQLITE_OK)
                // Every page of the table read once, as a pool's long-lived readers have.
                precondition(
                    sqlite3_exec(db, "SELECT sum(length(title)) + sum(updated) FROM note", nil, nil, nil) == SQLITE_OK)
                ready.leave()
                start.wait()
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
                done.leave()
                sqlite3_finalize(statement)
                sqlite3_close(db)
                closed.leave()
            }
        }
        ready.wait()
        let clock = ContinuousClock()
        let began = clock.now
        for _ in 0..<readers { start.signal() }
        done.wait()
        let took = clock.now - began
        closed.wait()
        return took
    }

    /// The raw-key text of a managed database's key, for the bare C baseline; the key's lock is
    /// released at once so that rotations can run.
    public static func keyText(_ key: KeyLease) throws -> SecureBuffer {
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

    /// What `readers` readers and a writer through `open`'s stack see over a few online
    /// rotations of a database of `megabytes` MB (medians over the rotations): the longest
    /// stretch in which no read completed, the reads' p99, and the writer's longest wait against
    /// the median rotation with nothing open.
    public static func pauseRows(
        _ label: String, manager: DatabaseKeyManager, megabytes: Int, readers: Int,
        open: @Sendable () async throws -> Stack
    ) async throws -> [BenchmarkRow] {
        let repetitions = megabytes <= 512 ? 3 : 1
        var offline: [Duration] = []
        var online: [Overlap] = []
        for _ in 0..<repetitions {
            sync()
            offline.append(try await Measure.time { try await manager.rotateKey() })
            sync()
            online.append(try await overlap(manager, readers: readers, stack: try await open()))
        }
        let rotation = Measure.median(offline)
        let gap = Measure.median(online.map(\.longestGap))
        let p99 = Measure.median(online.map(\.readP99))
        let write = Measure.median(online.map(\.longestWrite))
        let during = "online rotation of \(megabytes) MB (\(label))"
        let baseline = String(format: "%.2f s rotation, nothing open", Measure.seconds(rotation))
        let ratio = { (value: Duration) in String(format: "%.2f×", Measure.seconds(value) / Measure.seconds(rotation)) }
        return [
            .init(
                measurement: "longest stretch with no read completing, \(during)",
                ours: String(
                    format: "%.0f ms (from %.0f%% of the rotation)", Measure.seconds(gap) * 1e3,
                    (online.first { $0.longestGap == gap }?.longestGapAt ?? 0) * 100),
                baseline: baseline, ratio: ratio(gap),
                target: "≤ 50 ms", met: gap <= .milliseconds(50)),
            .init(
                measurement: "read p99 during the \(during)",
                ours: String(format: "%.1f ms (%d reads)", Measure.seconds(p99) * 1e3, online.map(\.reads).min() ?? 0),
                baseline: baseline, ratio: ratio(p99), target: "≤ 50 ms", met: p99 <= .milliseconds(50)),
            .init(
                measurement: "writer's longest wait, \(during)",
                ours: String(format: "%.2f s", Measure.seconds(write)), baseline: baseline, ratio: ratio(write),
                target: "— (writes wait for the copy)", met: nil),
        ]
    }

    /// What the reads and writes overlapping one online rotation saw.
    struct Overlap {
        var longestGap: Duration
        /// Where the longest stretch began, as a fraction of the rotation's length.
        var longestGapAt: Double
        var readP99: Duration
        var longestWrite: Duration
        var reads: Int
    }

    /// One online rotation with the readers and a writer running.
    private static func overlap(_ manager: DatabaseKeyManager, readers: Int, stack: Stack) async throws -> Overlap {
        let clock = ContinuousClock()
        let stop = StopFlag()
        typealias Span = (start: ContinuousClock.Instant, end: ContinuousClock.Instant)
        let rotating = Task {
            defer { stop.set() }
            try await Task.sleep(for: .milliseconds(200))
            let start = clock.now
            try await manager.rotateKey()
            return (start, clock.now)
        }
        let readerTasks = (0..<readers).map { reader in
            Task {
                var reads: [Span] = []
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
            var writes: [Span] = []
            var n: Int64 = 0
            while !stop.isSet {
                n += 1
                let start = clock.now
                try await stack.write(n)
                writes.append((start, clock.now))
            }
            return writes
        }
        let rotation: Span = try await rotating.value
        let overlaps = { (span: Span) in span.end > rotation.start && span.start < rotation.end }
        var reads: [Span] = []
        for reader in readerTasks { reads += try await reader.value.filter(overlaps) }
        let writes = try await writer.value.filter(overlaps)
        try await stack.close()
        // The stretches between completed reads, from the rotation's start to its end.
        let ends = [rotation.start] + reads.map(\.end).filter { $0 < rotation.end }.sorted() + [rotation.end]
        let gaps = zip(ends, ends.dropFirst()).map { (start: $0, length: $1 - $0) }
        let longest = gaps.max { $0.length < $1.length }
        let longestGap = longest?.length ?? .zero
        // Where in the rotation it began, as a fraction of the rotation's length.
        let gapAt =
            longest.map { Measure.seconds($0.start - rotation.start) / Measure.seconds(rotation.end - rotation.start) }
            ?? 0
        let latencies = reads.map { $0.end - $0.start }.sorted()
        return Overlap(
            longestGap: longestGap, longestGapAt: gapAt,
            readP99: latencies.isEmpty
                ? rotation.end - rotation.start : latencies[min(latencies.count - 1, latencies.count * 99 / 100)],
            longestWrite: writes.map { $0.end - $0.start }.max() ?? .zero, reads: reads.count)
    }

    /// A managed database filled to about `megabytes` MB with 3000-byte rows in `t(id, body)`.
    public static func managedDatabase(_ path: String, megabytes: Int, pageSize: Int, logger: Logger) async throws
        -> DatabaseKeyManager
    {
        removeDatabase(path)
        let manager = DatabaseKeyManager(
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
        for file in DatabaseFiles(path).all {
            try? FileManager.default.removeItem(atPath: file)
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
