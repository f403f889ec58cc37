#if canImport(Glibc)
    import Glibc
#endif
import Logging
import SQLCipherKeyManager
import SQLCipherKeyManagerTesting

/// The audit of this process: with MockKms's deterministic keys it creates a database, writes
/// and reads rows, rotates the key, and scans its own memory for the old and new data keys once
/// while a connection is open (the key must be found there, or the scan proves nothing) and once
/// after everything is closed and released.
enum SelfAudit {
    static let seed: UInt64 = 0xD8_4E_75_EE_D5

    static func run(in directory: String) async throws -> String {
        let patterns =
            KeyPatterns.masked("old", MockKms.dataKey(seed: seed, index: 0))
            + KeyPatterns.masked("new", MockKms.dataKey(seed: seed, index: 1))
        let whileOpen = try await exercise(in: directory) { MemoryScanner.Snapshot(of: getpid()).count(patterns) }
        // The manager, the KMS and every connection are gone.
        let afterClose = MemoryScanner.Snapshot(of: getpid()).count(patterns)
        return
            "{\"while_open\": \(Report.json(whileOpen, patterns)), \"after_close\": \(Report.json(afterClose, patterns))}"
    }

    private static func exercise(
        in directory: String, scanning scan: () -> MemoryScanner.Counts
    ) async throws -> MemoryScanner.Counts {
        let kms = MockKms(seed: seed)
        let logger = Logger(label: "audit") { _ in SwiftLogNoOpLogHandler() }
        let manager = DatabaseKeyManager(
            databasePath: directory + "/audit.db", kms: kms, configuration: .init(kekId: "audit"), logger: logger)
        try await manager.initialize()
        do {
            let db = try await manager.open()
            try db.execute("CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT)")
            for row in 0..<100 {
                try db.execute("INSERT INTO note(body) VALUES (?)", arguments: [.text("row \(row)")])
            }
            _ = try db.fetchAll("SELECT count(*) FROM note")
            db.close()
        }
        try await manager.rotateKey()
        let db = try await manager.open()
        _ = try db.fetchAll("SELECT body FROM note WHERE id < 10")
        // Everything is in use here: the scan must see the new key, or it proves nothing.
        let whileOpen = scan()
        db.close()
        return whileOpen
    }
}

/// The audit's JSON output.
enum Report {
    /// `{"PATTERN": {"locked": N, "engine": N, "elsewhere": N}, …}`, every pattern and place
    /// present.
    static func json(_ counts: MemoryScanner.Counts, _ patterns: [MemoryScanner.MaskedPattern]) -> String {
        let entries = patterns.map(\.name).sorted().map { name in
            let places = MemoryScanner.Place.allCases.map { "\"\($0.rawValue)\": \(counts[name]?[$0] ?? 0)" }
            return "\"\(name)\": {\(places.joined(separator: ", "))}"
        }
        return "{" + entries.joined(separator: ", ") + "}"
    }
}
