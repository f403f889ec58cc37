// dbkey-bench WORKDIR [SIZES_MB]      the whole benchmark (run it through Scripts/bench)
// dbkey-bench rotate WORKDIR [SIZES_MB]  only the rotation rows and the page-cipher comparison (Scripts/bench rotate)
// dbkey-bench open WORKDIR DBKEY…     only the open rows, and each dbkey build's start-up vs the sqlcipher shell's (Scripts/bench open)
// dbkey-bench rotate-child DATABASE [--in-place]  one rotation, printing the process's peak RSS in KiB
// dbkey-bench fleet WORKDIR COUNT DBKEY   rewrap --all over COUNT small databases (Scripts/bench fleet)
// dbkey-bench pool WORKDIR [SIZES_MB]  pool reads vs bare C, and the pause of online rotations (Scripts/bench pool)
//
// Every figure is a median of several runs (300 for opens, 5 or 3 for rotations, 30 for rewraps), measured against its baseline in the same run with
// the two alternating, and printed as one table.
import BenchmarkSupport
import CSQLCipher
import Foundation
import Logging
import SQLCipherKeyManager
import SQLCipherKeyManagerAWS

let logger = Logger(label: "bench") { _ in SwiftLogNoOpLogHandler() }
let arguments = Array(CommandLine.arguments.dropFirst())

/// The process's peak resident set (VmHWM), in KiB.
func peakResidentKiB() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
}

if arguments.first == "rotate-child", (2...3).contains(arguments.count) {
    let manager = DatabaseKeyManager(
        databasePath: arguments[1], kms: try LocalKms.fromEnvironment(logger: logger), logger: logger)
    try await manager.rotateKey(inPlace: arguments.last == "--in-place")
    print(peakResidentKiB())
    exit(0)
}

if arguments.first == "pool", arguments.count >= 2 {
    let sizes = (arguments.dropFirst(2).first ?? "100,1024").split(separator: ",").compactMap { Int($0) }
    BenchmarkRow.print(try await PoolBenchmark.run(workdir: arguments[1] + "/pool", sizesMB: sizes))
    exit(0)
}

if arguments.first == "fleet", arguments.count == 4, let count = Int(arguments[2]) {
    BenchmarkRow.print(try await FleetBenchmark.run(workdir: arguments[1], count: count, dbkey: arguments[3]))
    exit(0)
}

/// `rotate` or `open` to run only those rows, or `nil` for the whole benchmark.
let only = ["rotate", "open"].contains(arguments.first) ? arguments.first : nil
guard let workdir = arguments.dropFirst(only == nil ? 0 : 1).first else {
    print("usage: dbkey-bench [rotate | open] WORKDIR [SIZES_MB, default 256,1024 | DBKEY]")
    exit(64)
}
let sizesMB = (arguments.dropFirst(only == nil ? 1 : 2).first ?? "256,1024").split(separator: ",").compactMap {
    Int($0)
}
let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
/// The `sqlcipher` shell of the engine under test: the first on the PATH (Scripts/bench puts the
/// one built beside the linked library first).
let sqlcipherShell =
    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
    .map { "\($0)/sqlcipher" }.first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/sqlcipher"
var rows: [BenchmarkRow] = []

/// The 64 hex digits of a managed database's key, for the `sqlcipher` shell's `PRAGMA rekey`.
func hexString(_ key: KeyLease) throws -> String {
    defer { key.release() }
    return try key.withRawKeyText { String(decoding: $0.dropFirst(2).dropLast(), as: UTF8.self) }
}

/// A bare C open: sqlite3_open_v2, sqlite3_key, the page size, the first query, close.
@Sendable func bareOpen(_ path: String, key: UnsafeRawBufferPointer, pageSize: Int?, query: String) {
    var db: OpaquePointer?
    precondition(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK)
    precondition(sqlite3_key(db, key.baseAddress, Int32(key.count)) == SQLITE_OK)
    if let pageSize {
        precondition(sqlite3_exec(db, "PRAGMA cipher_page_size = \(pageSize)", nil, nil, nil) == SQLITE_OK)
    }
    var statement: OpaquePointer?
    precondition(sqlite3_prepare_v2(db, query, -1, &statement, nil) == SQLITE_OK)
    precondition(sqlite3_step(statement) == SQLITE_ROW)
    sqlite3_finalize(statement)
    sqlite3_close(db)
}

func runProcess(
    _ path: String, _ arguments: [String], input: String = "", environment: [String: String]? = nil,
    requireSuccess: Bool = true
) throws -> String {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let stdin = Pipe()
    let stdout = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = FileHandle.nullDevice
    try process.run()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    let output = stdout.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    precondition(!requireSuccess || process.terminationStatus == 0, "\(path) \(arguments) failed")
    return String(decoding: output, as: UTF8.self)
}

func timedSynchronously(_ body: () throws -> Void) rethrows -> Duration {
    let clock = ContinuousClock()
    let start = clock.now
    try body()
    return clock.now - start
}

func megabytesPerSecond(_ bytes: Int64, _ duration: Duration) -> Double {
    Double(bytes) / 1_000_000 / Measure.seconds(duration)
}

try FileManager.default.createDirectory(atPath: workdir, withIntermediateDirectories: true)

// MARK: 1. Open to first query

if only != "rotate" {
    let path = workdir + "/open.db"
    let manager = try await OnlineRotation.managedDatabase(path, megabytes: 1, pageSize: 4096, logger: logger)
    let text = try NotePages.keyText(try await manager.leaseKey())
    let coldManager: @Sendable () -> DatabaseKeyManager = {
        DatabaseKeyManager(
            databasePath: path, providers: manager.providers, configuration: .init(keyCacheTTL: .zero), logger: logger)
    }
    // A point query: the open's cost, not a scan of the table.
    let query = "SELECT id FROM t WHERE id = 1"
    let ours: () async throws -> Void = {
        let db = try await coldManager().open()
        _ = try db.fetchAll(query)
        db.close()
    }
    let bare: @Sendable () -> Void = { text.withUnsafeBytes { bareOpen(path, key: $0, pageSize: 4096, query: query) } }
    let warmManager = DatabaseKeyManager(databasePath: path, providers: manager.providers, logger: logger)
    try await warmManager.open().close()
    let warmOpen: @Sendable () async throws -> Void = {
        let db = try await warmManager.open()
        _ = try db.fetchAll(query)
        db.close()
    }
    // From a task, as an app opens off its main actor: `open()` runs on the caller's executor,
    // like the bare C open beside it. Then from the main actor, which `open()` leaves for the
    // global executor and comes back to: two hops the bare C open does not make.
    let (cold, warm) = try await Task.detached {
        let cold = try await Measure.alternating(
            300,
            {
                let db = try await coldManager().open()
                _ = try db.fetchAll(query)
                db.close()
            }, bare)
        return (cold, try await Measure.alternating(300, warmOpen, bare))
    }.value
    let warmFromMainActor = try await Measure.alternating(300, warmOpen, bare)
    // A passphrase database with the engine's defaults: PBKDF2 over 64,000 HMAC-SHA1 rounds and
    // 1024-byte pages on 3.x, 256,000 HMAC-SHA512 rounds and 4096-byte pages on 4.x.
    let passphrasePath = workdir + "/passphrase.db"
    OnlineRotation.removeDatabase(passphrasePath)
    let passphrase = Array("correct horse battery staple".utf8)
    var db: OpaquePointer?
    sqlite3_open_v2(passphrasePath, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nil)
    sqlite3_key(db, passphrase, Int32(passphrase.count))
    sqlite3_exec(db, "CREATE TABLE t(id INTEGER PRIMARY KEY, a); INSERT INTO t VALUES (1, 1)", nil, nil, nil)
    sqlite3_close(db)
    let passphraseOpen = try await Measure.alternating(20, ours) {
        passphrase.withUnsafeBytes { bareOpen(passphrasePath, key: $0, pageSize: nil, query: query) }
    }
    let coldRatio = Measure.seconds(cold.a) / Measure.seconds(cold.b)
    let warmRatio = Measure.seconds(warm.a) / Measure.seconds(warm.b)
    let mainActorRatio = Measure.seconds(warmFromMainActor.a) / Measure.seconds(warmFromMainActor.b)
    let speedup = Measure.seconds(passphraseOpen.b) / Measure.seconds(passphraseOpen.a)
    rows.append(
        .init(
            measurement: "open + first query, cold cache (local KMS)", ours: Measure.microseconds(cold.a),
            baseline: "\(Measure.microseconds(cold.b)) bare C", ratio: String(format: "%.2f×", coldRatio),
            target: "≤ 1.5×", met: coldRatio <= 1.5))
    rows.append(
        .init(
            measurement: "open + first query, warm cache", ours: Measure.microseconds(warm.a),
            baseline: "\(Measure.microseconds(warm.b)) bare C", ratio: String(format: "%.2f×", warmRatio),
            target: "≤ 1.2×", met: warmRatio <= 1.2))
    rows.append(
        .init(
            measurement: "open + first query, warm cache, from the main actor (two executor hops)",
            ours: Measure.microseconds(warmFromMainActor.a),
            baseline: "\(Measure.microseconds(warmFromMainActor.b)) bare C",
            ratio: String(format: "%.2f×", mainActorRatio), target: "—", met: nil))
    rows.append(
        .init(
            measurement: "passphrase open vs ours (cold)", ours: Measure.microseconds(passphraseOpen.a),
            baseline: "\(Measure.milliseconds(passphraseOpen.b)) PBKDF2",
            ratio: String(format: "%.0f× faster", speedup), target: "≥ 50× faster", met: speedup >= 50))
    if only == "open" {
        // A whole process: `dbkey sql` (each build named) against the sqlcipher shell doing the
        // same open and query.
        let keyHex = try hexString(try await manager.leaseKey())
        for dbkey in arguments.dropFirst(2) {
            let processes = try await Measure.alternating(
                30,
                { _ = try runProcess(dbkey, ["sql", path, query]) },
                {
                    _ = try runProcess(
                        sqlcipherShell, [path],
                        input: "PRAGMA key = \"x'\(keyHex)'\";\nPRAGMA cipher_page_size = 4096;\n\(query);\n")
                })
            let ratio = Measure.seconds(processes.a) / Measure.seconds(processes.b)
            let build = dbkey.contains("/.build-static/") ? "Swift runtime static" : "Swift runtime shared"
            rows.append(
                .init(
                    measurement: "dbkey sql process (\(build)), open + point query, start-up included",
                    ours: Measure.milliseconds(processes.a),
                    baseline: "\(Measure.milliseconds(processes.b)) sqlcipher shell",
                    ratio: String(format: "%.2f×", ratio), target: "—", met: nil))
        }
        BenchmarkRow.print(rows)
        exit(0)
    }
}

// MARK: 2. Rotation throughput

rows += try await PageCipherBenchmark.run(workdir: workdir)
var peakAtLargest: Int?
for pageSize in [4096, 1024] {
    for megabytes in sizesMB {
        let ours = workdir + "/rotate-ours.db"
        let manager = try await OnlineRotation.managedDatabase(
            ours, megabytes: megabytes, pageSize: pageSize, logger: logger)
        let bytes = (try FileManager.default.attributesOfItem(atPath: ours)[.size] as? Int64) ?? 0
        let shellCopy = workdir + "/rotate-shell.db"
        OnlineRotation.removeDatabase(shellCopy)
        try FileManager.default.copyItem(atPath: ours, toPath: shellCopy)
        var shellKey = try hexString(try await manager.leaseKey())
        var oursTimes: [Duration] = []
        var inPlaceTimes: [Duration] = []
        var shellTimes: [Duration] = []
        var exportTimes: [Duration] = []
        var copyTimes: [Duration] = []
        var peak = 0
        // Both copies on disk before timing, so that writeback of one does not slow the other.
        sync()
        for repetition in 0..<(megabytes <= 512 ? 5 : 3) {
            let next = try SecureBuffer.random(count: 32).withUnsafeBytes {
                $0.map { String(format: "%02x", $0) }.joined()
            }
            let rotateOurs = {
                sync()
                oursTimes.append(
                    try timedSynchronously {
                        peak = max(
                            peak,
                            Int(
                                try runProcess(executable, ["rotate-child", ours]).trimmingCharacters(
                                    in: .whitespacesAndNewlines)) ?? 0)
                    })
                sync()
                inPlaceTimes.append(
                    try timedSynchronously { _ = try runProcess(executable, ["rotate-child", ours, "--in-place"]) })
            }
            let rekeyShell = {
                sync()
                shellTimes.append(
                    try timedSynchronously {
                        _ = try runProcess(
                            sqlcipherShell, [shellCopy],
                            input:
                                "PRAGMA key = \"x'\(shellKey)'\";\nPRAGMA cipher_page_size = \(pageSize);\nPRAGMA rekey = \"x'\(next)'\";\n"
                        )
                    })
                shellKey = next
            }
            // Alternate which goes first, so that neither always follows the other's writeback.
            if repetition % 2 == 0 {
                try rotateOurs()
                try rekeyShell()
            } else {
                try rekeyShell()
                try rotateOurs()
            }
            sync()
            let exported = workdir + "/exported.db"
            OnlineRotation.removeDatabase(exported)
            exportTimes.append(
                try await Measure.time {
                    _ = try runProcess(
                        sqlcipherShell, [shellCopy],
                        input:
                            "PRAGMA key = \"x'\(shellKey)'\";\nPRAGMA cipher_page_size = \(pageSize);\nATTACH DATABASE '\(exported)' AS e KEY \"x'\(next)'\";\nPRAGMA e.cipher_page_size = \(pageSize);\nSELECT sqlcipher_export('e');\nDETACH DATABASE e;\n"
                    )
                })
            OnlineRotation.removeDatabase(exported)
            copyTimes.append(
                try await Measure.time {
                    let copy = workdir + "/copied.db"
                    let source = try FileHandle(forReadingFrom: URL(fileURLWithPath: ours))
                    _ = FileManager.default.createFile(atPath: copy, contents: nil)
                    let destination = try FileHandle(forWritingTo: URL(fileURLWithPath: copy))
                    while let chunk = try source.read(upToCount: 1 << 20), !chunk.isEmpty {
                        try destination.write(contentsOf: chunk)
                    }
                    try destination.synchronize()
                    try destination.close()
                    try source.close()
                    try FileManager.default.removeItem(atPath: copy)
                })
        }
        // Six rotations later (three by copy, three in place), every page must still check out.
        _ = try await DatabaseKeyManager(
            databasePath: ours, kms: try LocalKms.fromEnvironment(logger: logger), logger: logger
        ).verify()
        let oursRate = megabytesPerSecond(bytes, Measure.median(oursTimes))
        let inPlaceRate = megabytesPerSecond(bytes, Measure.median(inPlaceTimes))
        let shellRate = megabytesPerSecond(bytes, Measure.median(shellTimes))
        let exportRate = megabytesPerSecond(bytes, Measure.median(exportTimes))
        let copyRate = megabytesPerSecond(bytes, Measure.median(copyTimes))
        let ratio = oursRate / shellRate
        rows.append(
            .init(
                measurement:
                    "rotate \(bytes / 1_000_000) MB, \(pageSize) B pages (export \(String(format: "%.0f", exportRate)), fsync'd copy \(String(format: "%.0f", copyRate)) MB/s)",
                ours: String(format: "%.0f MB/s", oursRate),
                baseline: String(format: "%.0f MB/s shell rekey", shellRate),
                ratio: String(format: "%.2f×", ratio), target: "≥ 2×", met: ratio >= 2))
        rows.append(
            .init(
                measurement: "rotate --in-place \(bytes / 1_000_000) MB, \(pageSize) B pages (PRAGMA rekey)",
                ours: String(format: "%.0f MB/s", inPlaceRate),
                baseline: String(format: "%.0f MB/s shell rekey", shellRate),
                ratio: String(format: "%.2f×", inPlaceRate / shellRate), target: "≥ 0.95×",
                met: inPlaceRate / shellRate >= 0.95))
        if megabytes == sizesMB.max() {
            peakAtLargest = max(peakAtLargest ?? 0, peak)
            rows.append(
                .init(
                    measurement: "peak memory, rotating \(bytes / 1_000_000) MB (\(pageSize) B pages)",
                    ours: "\(peak / 1024) MB",
                    baseline: "—", ratio: "—", target: "≤ 64 MB", met: peak / 1024 <= 64))
        }
        OnlineRotation.removeDatabase(shellCopy)
        if megabytes == sizesMB.max(), pageSize == 4096, only == nil {
            // Kept for the rewrap measurement.
            OnlineRotation.removeDatabase(workdir + "/rewrap-large.db")
            try FileManager.default.moveItem(atPath: ours, toPath: workdir + "/rewrap-large.db")
            try FileManager.default.moveItem(
                atPath: DatabaseFiles(ours).keyFile, toPath: DatabaseFiles(workdir + "/rewrap-large.db").keyFile)
        }
        OnlineRotation.removeDatabase(ours)
    }
}

if only != nil {
    BenchmarkRow.print(rows)
    exit(0)
}

// MARK: 3. Rewrap

do {
    let small = workdir + "/rewrap-small.db"
    let large = workdir + "/rewrap-large.db"  // the largest 4096-page database, kept from above
    _ = try await OnlineRotation.managedDatabase(small, megabytes: 1, pageSize: 4096, logger: logger)
    let first = try LocalKms.fromEnvironment(logger: logger)
    let second = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
    var times: [String: [Duration]] = [small: [], large: []]
    var current: [String: any KeyManagementService] = [small: first, large: first]
    for _ in 0..<30 {
        for path in [small, large] {
            let from = current[path]!
            let to: any KeyManagementService = (from as? LocalKms)?.kekId == first.kekId ? second : first
            let manager = DatabaseKeyManager(databasePath: path, kms: from, logger: logger)
            times[path]!.append(try await Measure.time { try await manager.rewrap(to: to, kekId: "default") })
            current[path] = to
        }
    }
    let largeBytes = (try FileManager.default.attributesOfItem(atPath: large)[.size] as? Int64) ?? 0
    let smallTime = Measure.median(times[small]!)
    let largeTime = Measure.median(times[large]!)
    rows.append(
        .init(
            measurement: "rewrap, 1 MB vs \(largeBytes / 1_000_000) MB database (local → local)",
            ours: Measure.milliseconds(largeTime),
            baseline: "\(Measure.milliseconds(smallTime)) at 1 MB",
            ratio: String(format: "%.2f×", Measure.seconds(largeTime) / Measure.seconds(smallTime)),
            target: "≤ 5 ms, same at both",
            met: Measure.seconds(largeTime) <= 0.005 && Measure.seconds(smallTime) <= 0.005))
    OnlineRotation.removeDatabase(small)
    OnlineRotation.removeDatabase(large)
}

// MARK: 4. KMS calls per open (AWS KMS on moto)

/// Counts the calls that reach the provider.
final class CountingKms: KeyManagementService, @unchecked Sendable {
    let inner: any KeyManagementService
    private let lock = NSLock()
    private var decrypts = 0
    init(_ inner: any KeyManagementService) { self.inner = inner }
    var providerName: String { inner.providerName }
    var decryptCount: Int { lock.withLock { decrypts } }
    func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        try await inner.generateDataKey(kekId: kekId, context: context)
    }
    func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws -> SecureBuffer {
        lock.withLock { decrypts += 1 }
        return try await inner.decrypt(wrapped, kekId: kekId, context: context)
    }
    func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        try await inner.encrypt(key, kekId: kekId, context: context)
    }
    func health(kekId: String) async throws -> KmsHealth { try await inner.health(kekId: kekId) }
}

let environment = ProcessInfo.processInfo.environment
if let endpoint = environment["DBKEY_TEST_AWS_ENDPOINT"], let keyArn = environment["DBKEY_TEST_AWS_KEY_ARN"],
    let accessKey = environment["DBKEY_TEST_AWS_ACCESS_KEY_ID"],
    var secret = environment["DBKEY_TEST_AWS_SECRET_ACCESS_KEY"]
{
    let credentials = AWSCredentials(
        accessKeyId: accessKey, secretAccessKey: secret.withUTF8 { SecureBuffer(copying: UnsafeRawBufferPointer($0)) })
    let kms = CountingKms(
        AWSKms(credentials: credentials, region: "us-east-1", endpoint: URL(string: endpoint), logger: logger))
    let path = workdir + "/aws.db"
    OnlineRotation.removeDatabase(path)
    try await DatabaseKeyManager(databasePath: path, kms: kms, configuration: .init(kekId: keyArn), logger: logger)
        .initialize()
    let manager = DatabaseKeyManager(databasePath: path, kms: kms, logger: logger)
    let before = kms.decryptCount
    let coldTime = try await Measure.time { try await manager.open().close() }
    let cold = kms.decryptCount - before
    let warmTime = try await Measure.time { try await manager.open().close() }
    let warm = kms.decryptCount - before - cold
    rows.append(
        .init(
            measurement: "AWS KMS (moto) Decrypt calls per open, cold / warm", ours: "\(cold) / \(warm)",
            baseline: "\(Measure.milliseconds(coldTime)) / \(Measure.milliseconds(warmTime))", ratio: "—",
            target: "1 / 0", met: cold == 1 && warm == 0))
    OnlineRotation.removeDatabase(path)
} else {
    rows.append(
        .init(
            measurement: "AWS KMS Decrypt calls per open", ours: "not run",
            baseline: "no moto server (run Scripts/bench)",
            ratio: "—", target: "1 / 0", met: nil))
}

// MARK: 5. Statement overhead

do {
    let path = workdir + "/statements.db"
    let manager = try await OnlineRotation.managedDatabase(path, megabytes: 1, pageSize: 4096, logger: logger)
    let key = try NotePages.keyText(try await manager.leaseKey())
    let count = 100_000
    var library: [Duration] = []
    var bare: [Duration] = []
    var librarySelect: [Duration] = []
    var bareSelect: [Duration] = []
    for round in 0..<3 {
        let db = try await manager.open()
        try db.execute("DROP TABLE IF EXISTS s; CREATE TABLE s(a INTEGER PRIMARY KEY, b TEXT)")
        library.append(
            try await Measure.time {
                let insert = try db.prepare("INSERT INTO s(a, b) VALUES (?, ?)")
                try db.inTransaction {
                    for value in 0..<count { try insert.execute(arguments: [.integer(Int64(value)), .text("value")]) }
                }
            })
        librarySelect.append(
            try await Measure.time {
                let select = try db.prepare("SELECT b FROM s WHERE a = ?")
                for value in 0..<count { _ = try select.fetchAll(arguments: [.integer(Int64((value * 7919) % count))]) }
            })
        db.close()
        var handle: OpaquePointer?
        sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE, nil)
        key.withUnsafeBytes { _ = sqlite3_key(handle, $0.baseAddress, Int32($0.count)) }
        sqlite3_exec(
            handle,
            "PRAGMA cipher_page_size = 4096; DROP TABLE IF EXISTS s; CREATE TABLE s(a INTEGER PRIMARY KEY, b TEXT)",
            nil, nil, nil)
        bare.append(
            await Measure.time {
                var statement: OpaquePointer?
                sqlite3_prepare_v2(handle, "INSERT INTO s(a, b) VALUES (?, ?)", -1, &statement, nil)
                sqlite3_exec(handle, "BEGIN", nil, nil, nil)
                for value in 0..<count {
                    sqlite3_bind_int64(statement, 1, Int64(value))
                    sqlite3_bind_text(statement, 2, "value", -1, unsafeBitCast(-1, to: sqlite3_destructor_type.self))
                    precondition(sqlite3_step(statement) == SQLITE_DONE)
                    sqlite3_reset(statement)
                }
                sqlite3_exec(handle, "COMMIT", nil, nil, nil)
                sqlite3_finalize(statement)
            })
        bareSelect.append(
            await Measure.time {
                var statement: OpaquePointer?
                sqlite3_prepare_v2(handle, "SELECT b FROM s WHERE a = ?", -1, &statement, nil)
                for value in 0..<count {
                    sqlite3_bind_int64(statement, 1, Int64((value * 7919) % count))
                    while sqlite3_step(statement) == SQLITE_ROW { _ = sqlite3_column_text(statement, 0) }
                    sqlite3_reset(statement)
                }
                sqlite3_finalize(statement)
            })
        sqlite3_close(handle)
        _ = round
    }
    let insertRatio = Measure.seconds(Measure.median(library)) / Measure.seconds(Measure.median(bare))
    let selectRatio = Measure.seconds(Measure.median(librarySelect)) / Measure.seconds(Measure.median(bareSelect))
    rows.append(
        .init(
            measurement: "100k inserts in a transaction (prepared)",
            ours: Measure.milliseconds(Measure.median(library)),
            baseline: "\(Measure.milliseconds(Measure.median(bare))) C API",
            ratio: String(format: "%.2f×", insertRatio), target: "—", met: nil))
    rows.append(
        .init(
            measurement: "100k point selects (prepared)", ours: Measure.milliseconds(Measure.median(librarySelect)),
            baseline: "\(Measure.milliseconds(Measure.median(bareSelect))) C API",
            ratio: String(format: "%.2f×", selectRatio), target: "—", met: nil))
    OnlineRotation.removeDatabase(path)
}

// MARK: 6. The connection pool

rows += try await PoolBenchmark.run(workdir: workdir + "/pool", sizesMB: [100, 1024])

BenchmarkRow.print(rows)
