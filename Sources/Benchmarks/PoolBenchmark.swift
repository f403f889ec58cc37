import BenchmarkSupport
import Foundation
import Logging
import SQLCipherKeyManager

/// The connection pool: UI-shaped reads through it against bare C handles in as many threads,
/// and the pause readers see while the key is rotated online against the same rotation with
/// nothing open.
enum PoolBenchmark {
    static func run(workdir: String, sizesMB: [Int]) async throws -> [BenchmarkRow] {
        try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
        var rows = try await reads(workdir: workdir)
        for megabytes in sizesMB {
            let path = workdir + "/online.db"
            let manager = try await OnlineRotation.managedDatabase(
                path, megabytes: megabytes, pageSize: 4096, logger: logger)
            // Both rotations in WAL mode, the mode a pool puts the database in.
            await (try await manager.openPool()).close()
            rows.append(
                contentsOf: try await OnlineRotation.pauseRows(
                    "4 readers + writer", manager: manager, megabytes: megabytes, readers: 4
                ) {
                    let pool = try await manager.openPool(maximumReaders: 4)
                    return OnlineRotation.Stack(
                        read: { after in
                            _ = try await pool.read { db in
                                try db.fetchAll(
                                    "SELECT id FROM t WHERE id > ? ORDER BY id LIMIT 100", arguments: [.integer(after)])
                            }
                        },
                        write: { n in
                            try await pool.write { db in
                                try db.execute(
                                    "UPDATE t SET body = randomblob(100) WHERE id = ?", arguments: [.integer(n)])
                            }
                        },
                        close: { await pool.close() })
                })
        }
        return rows
    }

    private static func reads(workdir: String) async throws -> [BenchmarkRow] {
        let path = workdir + "/pool.db"
        OnlineRotation.removeDatabase(path)
        let manager = DatabaseKeyManager(
            databasePath: path, kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
        let pool = try await manager.openPool(maximumReaders: 4)
        try await pool.write { db in
            try db.execute(NotePages.schema)
            try db.execute(NotePages.fill, arguments: [.integer(Int64(NotePages.notes))])
        }
        let text = try NotePages.keyText(try await manager.leaseKey())
        var result: [BenchmarkRow] = []
        for readers in [1, 2, 4] {
            // Async reads from tasks, synchronous reads from threads, each in a transaction
            // (read) and as one statement (fetch), and bare C: alternating, 5 rounds.
            let forms: [(label: String, target: Double, run: @Sendable () async throws -> Void)] = [
                (
                    "pool.read, tasks", 1.6,
                    {
                        try await NotePages.concurrentReads(readers: readers) { after in
                            try await pool.read { db in
                                try db.fetch(NotePages.page, arguments: [.integer(after)], NotePages.decode).count
                            }
                        }
                    }
                ),
                (
                    "pool.readSynchronously, threads", 1.3,
                    {
                        try await offPool {
                            NotePages.threadReads(readers: readers) { after in
                                try pool.readSynchronously { db in
                                    try db.fetch(NotePages.page, arguments: [.integer(after)], NotePages.decode).count
                                }
                            }
                        }
                    }
                ),
                (
                    "pool.fetch, tasks, no BEGIN/COMMIT", 1.6,
                    {
                        try await NotePages.concurrentReads(readers: readers) { after in
                            try await pool.fetch(NotePages.page, arguments: [.integer(after)], NotePages.decode).count
                        }
                    }
                ),
                (
                    "pool.fetchSynchronously, threads, no BEGIN/COMMIT", 1.3,
                    {
                        try await offPool {
                            NotePages.threadReads(readers: readers) { after in
                                try pool.fetchSynchronously(
                                    NotePages.page, arguments: [.integer(after)], NotePages.decode
                                ).count
                            }
                        }
                    }
                ),
            ]
            var times = Array(repeating: [Duration](), count: forms.count)
            var bare: [Duration] = []
            for _ in 0..<5 {
                for (index, form) in forms.enumerated() {
                    times[index].append(try await Measure.time { try await form.run() })
                }
                bare.append(try await offPool { NotePages.bareReads(path, key: text, readers: readers) })
            }
            let total = Double(readers * NotePages.readsPerReader)
            let baseline = Measure.median(bare)
            let readersText = "\(readers) reader\(readers == 1 ? "" : "s")"
            let baselineText = String(
                format: "%.0f reads/s bare C, %d thread%@", total / Measure.seconds(baseline), readers,
                readers == 1 ? "" : "s")
            for (form, times) in zip(forms, times) {
                let (label, target) = (form.label, form.target)
                let median = Measure.median(times)
                let ratio = Measure.seconds(median) / Measure.seconds(baseline)
                result.append(
                    .init(
                        measurement: "100-row page reads, \(readersText) (\(label))",
                        ours: String(format: "%.0f reads/s", total / Measure.seconds(median)),
                        baseline: baselineText, ratio: String(format: "%.2f×", ratio),
                        target: String(format: "≤ %.1f×", target), met: ratio <= target))
            }
        }
        result.append(try await writes(manager, fullPool: pool))
        await pool.close()
        return result
    }

    /// One-row writes through a pool whose writer commits with `synchronous = NORMAL` against
    /// one with `FULL` (the default), alternating.
    private static func writes(_ manager: DatabaseKeyManager, fullPool: ConnectionPool) async throws -> BenchmarkRow {
        let normalPool = try await manager.openPool(maximumReaders: 1, synchronous: .normal)
        let count = 300
        @Sendable func write(_ pool: ConnectionPool) async throws {
            for n in 1...count {
                try await pool.write { db in
                    try db.execute(
                        "UPDATE note SET updated = updated + 1 WHERE id = ?", arguments: [.integer(Int64(n))])
                }
            }
        }
        let times = try await Measure.alternating(5, { try await write(normalPool) }, { try await write(fullPool) })
        await normalPool.close()
        let perWrite = { (total: Duration) in Measure.seconds(total) * 1e3 / Double(count) }
        return .init(
            measurement: "a write (one row), pool writer with synchronous = NORMAL vs FULL (the default)",
            ours: String(format: "%.3f ms NORMAL", perWrite(times.a)),
            baseline: String(format: "%.3f ms FULL", perWrite(times.b)),
            ratio: String(format: "%.2f×", Measure.seconds(times.a) / Measure.seconds(times.b)),
            target: "— (measured, both modes)", met: nil)
    }
}
