// dbkey-grdb-bench WORKDIR [SIZES_MB]   (run it through Scripts/bench grdb)
//
// GRDB under DBKey, against its baselines in the same run: 100-row page reads through a
// KeyedDatabasePool with 1 and 2 readers vs bare C handles on the same library, alternating,
// medians of 5; GRDB's own DatabasePool (keyed through the seam) against DBKey's
// ConnectionPool, async reads from tasks and synchronous reads from threads, with 1, 2 and 4
// readers, beside bare C, alternating, medians of 5; and what GRDB's readers see during an
// online rotation of each size through KeyedDatabasePool vs the same rotation with nothing
// open. One table.
import BenchmarkSupport
import DBKeyGRDB
import Foundation
import GRDB
import Logging
import SQLCipherKeyManager

let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
let arguments = Array(CommandLine.arguments.dropFirst())
guard let workdir = arguments.first else {
    print("usage: dbkey-grdb-bench WORKDIR [SIZES_MB, default 100,1024]")
    exit(64)
}
let sizesMB = (arguments.dropFirst().first ?? "100,1024").split(separator: ",").compactMap { Int($0) }
try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)
var rows: [BenchmarkRow] = []

// MARK: - Reads

let path = workdir + "/grdb.db"
OnlineRotation.removeDatabase(path)
let manager = DatabaseKeyManager(databasePath: path, kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
let grdb = try await KeyedDatabasePool(manager: manager)
try await grdb.write { db in
    try db.execute(sql: NotePages.schema)
    try db.execute(sql: NotePages.fill, arguments: [NotePages.notes])
}
let text = try NotePages.keyText(try await manager.leaseKey())

/// A page decoded into the same Swift values, through GRDB's row cursor.
@Sendable func grdbPage(_ db: Database, after: Int64) throws -> [(Int64, String, Double)] {
    try Array(
        Row.fetchCursor(db, sql: NotePages.page, arguments: [after]).map { row -> (Int64, String, Double) in
            (row[0], row[1], row[2])
        })
}

func grdbReads(_ readers: Int) async throws {
    try await NotePages.concurrentReads(readers: readers) { after in
        try await grdb.read { db in try grdbPage(db, after: after).count }
    }
}

func row(_ readers: Int, against baseline: String, _ times: (a: Duration, b: Duration)) -> BenchmarkRow {
    let total = Double(readers * NotePages.readsPerReader)
    let ratio = Measure.seconds(times.a) / Measure.seconds(times.b)
    return .init(
        measurement: "100-row page reads, \(readers) reader\(readers == 1 ? "" : "s") (GRDB through KeyedDatabasePool)",
        ours: String(format: "%.0f reads/s", total / Measure.seconds(times.a)),
        baseline: String(format: "%.0f reads/s %@", total / Measure.seconds(times.b), baseline),
        ratio: String(format: "%.2f×", ratio), target: "—", met: nil)
}

for readers in [1, 2] {
    var grdbTimes: [Duration] = []
    var bareTimes: [Duration] = []
    for _ in 0..<5 {
        grdbTimes.append(try await Measure.time { try await grdbReads(readers) })
        bareTimes.append(try await offPool { NotePages.bareReads(path, key: text, readers: readers) })
    }
    let bare = (a: Measure.median(grdbTimes), b: Measure.median(bareTimes))
    rows.append(row(readers, against: "bare C, \(readers) thread\(readers == 1 ? "" : "s")", bare))
}
try await grdb.close()

// GRDB's own DatabasePool on the same database, keyed through the seam, against DBKey's pool:
// async reads from tasks and synchronous reads from threads, beside bare C, alternating.
let seamKey = try await manager.leaseKey()
var seamConfiguration = Configuration()
seamConfiguration.prepareDatabase { db in
    guard let handle = db.sqliteConnection else { throw DBKeyError(.invalidConfiguration, "no SQLite handle") }
    try seamKey.apply(to: handle)
}
let grdbPool = try DatabasePool(path: path, configuration: seamConfiguration)
let dbkeyPool = try await manager.openPool(maximumReaders: 4)

for readers in [1, 2, 4] {
    var times: [String: [Duration]] = [:]
    for _ in 0..<5 {
        times["GRDB async", default: []].append(
            try await Measure.time {
                try await NotePages.concurrentReads(readers: readers) { after in
                    try await grdbPool.read { db in try grdbPage(db, after: after).count }
                }
            })
        times["DBKey async", default: []].append(
            try await Measure.time {
                try await NotePages.concurrentReads(readers: readers) { after in
                    try await dbkeyPool.read { db in
                        try db.fetch(NotePages.page, arguments: [.integer(after)], NotePages.decode).count
                    }
                }
            })
        times["GRDB sync", default: []].append(
            try await Measure.time {
                try await offPool {
                    NotePages.threadReads(readers: readers) { after in
                        try grdbPool.read { db in try grdbPage(db, after: after).count }
                    }
                }
            })
        times["DBKey sync", default: []].append(
            try await Measure.time {
                try await offPool {
                    NotePages.threadReads(readers: readers) { after in
                        try dbkeyPool.readSynchronously { db in
                            try db.fetch(NotePages.page, arguments: [.integer(after)], NotePages.decode).count
                        }
                    }
                }
            })
        times["bare", default: []].append(
            try await offPool { NotePages.bareReads(path, key: text, readers: readers) })
    }
    let median = { (name: String) in Measure.median(times[name] ?? []) }
    let total = Double(readers * NotePages.readsPerReader)
    let readersText = "\(readers) reader\(readers == 1 ? "" : "s")"
    for (form, dbkeyLabel, target) in [
        ("async", "pool.read, tasks", 1.6), ("sync", "pool.readSynchronously, threads", 1.3),
    ] {
        let ours = median("DBKey \(form)")
        let grdbTime = median("GRDB \(form)")
        let bareTime = median("bare")
        let ratio = Measure.seconds(ours) / Measure.seconds(bareTime)
        let grdbRatio = Measure.seconds(grdbTime) / Measure.seconds(bareTime)
        rows.append(
            .init(
                measurement:
                    "100-row page reads, \(readersText) (DBKey \(dbkeyLabel)) vs GRDB's DatabasePool \(form) read",
                ours: String(format: "%.0f reads/s (%.2f× bare C)", total / Measure.seconds(ours), ratio),
                baseline: String(
                    format: "GRDB %.0f reads/s (%.2f× bare C); bare C %.0f reads/s", total / Measure.seconds(grdbTime),
                    grdbRatio, total / Measure.seconds(bareTime)),
                ratio: String(format: "%.2f× GRDB's time", Measure.seconds(ours) / Measure.seconds(grdbTime)),
                target: String(format: "≤ %.1f× bare C and ahead of GRDB", target),
                met: ratio <= target && ours < grdbTime))
    }
}
try grdbPool.close()
seamKey.release()
await dbkeyPool.close()

// MARK: - Pause during an online rotation

for megabytes in sizesMB {
    let online = workdir + "/grdb-online.db"
    let rotated = try await OnlineRotation.managedDatabase(online, megabytes: megabytes, pageSize: 4096, logger: logger)
    // Both rotations in WAL mode, the mode a GRDB pool puts the database in.
    try await (try await KeyedDatabasePool(manager: rotated)).close()
    rows.append(
        contentsOf: try await OnlineRotation.pauseRows(
            "GRDB, 2 readers + writer", manager: rotated, megabytes: megabytes, readers: 2
        ) {
            let pool = try await KeyedDatabasePool(manager: rotated)
            return OnlineRotation.Stack(
                read: { after in
                    _ = try await pool.read { db in
                        try Row.fetchAll(
                            db, sql: "SELECT id FROM t WHERE id > ? ORDER BY id LIMIT 100", arguments: [after]
                        ).count
                    }
                },
                write: { n in
                    try await pool.write { db in
                        try db.execute(sql: "UPDATE t SET body = randomblob(100) WHERE id = ?", arguments: [n])
                    }
                },
                close: { try await pool.close() })
        })
    OnlineRotation.removeDatabase(online)
}
BenchmarkRow.print(rows)
