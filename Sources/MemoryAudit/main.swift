// dbkey-memory-audit DIRECTORY
//
// Measures, instead of trusting, that key material is gone from memory once DBKey is done with
// it. With MockKms's deterministic keys it creates a database in DIRECTORY, writes and reads
// rows, rotates the key, and scans its own readable memory for the old and new data keys in
// raw, lowercase-hex and uppercase-hex form: once while a connection is open (the key must be
// found there, or the scan proves nothing) and once after everything is closed and released
// (where it must not be). It prints one JSON object of counts.
import Logging
import SQLCipherKeyManager
import SQLCipherKeyManagerTesting

let seed: UInt64 = 0xD8_4E_75_EE_D5
let directory = CommandLine.arguments.dropFirst().first ?? "."

/// Masked forms of a key, made straight from secure memory: no clear copy is ever built.
func maskedPatterns(_ name: String, _ key: SecureBuffer) -> [MemoryScanner.MaskedPattern] {
    let mask = MemoryScanner.mask
    return key.withUnsafeBytes { bytes -> [MemoryScanner.MaskedPattern] in
        let digits: (UInt8, UInt8) -> UInt8 = { nibble, letterBase in
            nibble < 10 ? 0x30 + nibble : letterBase + nibble - 10
        }
        let raw = bytes.map { $0 ^ mask }
        let lower = bytes.flatMap { [digits($0 >> 4, 0x61) ^ mask, digits($0 & 0x0F, 0x61) ^ mask] }
        let upper = bytes.flatMap { [digits($0 >> 4, 0x41) ^ mask, digits($0 & 0x0F, 0x41) ^ mask] }
        return [
            .init(name: "\(name)_raw", bytes: raw), .init(name: "\(name)_hex", bytes: lower),
            .init(name: "\(name)_HEX", bytes: upper),
        ]
    }
}

let patterns =
    maskedPatterns("old", MockKms.dataKey(seed: seed, index: 0))
    + maskedPatterns("new", MockKms.dataKey(seed: seed, index: 1))

func exercise() async throws -> [String: Int] {
    let kms = MockKms(seed: seed)
    let logger = Logger(label: "audit") { _ in SwiftLogNoOpLogHandler() }
    let manager = LocalDbKeyManager(
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
    let whileOpen = MemoryScanner.count(patterns)
    db.close()
    return whileOpen
}

let whileOpen = try await exercise()
// The manager, the KMS and every connection are gone.
let afterClose = MemoryScanner.count(patterns)
func json(_ counts: [String: Int]) -> String {
    "{" + counts.keys.sorted().map { "\"\($0)\": \(counts[$0]!)" }.joined(separator: ", ") + "}"
}
print("{\"while_open\": \(json(whileOpen)), \"after_close\": \(json(afterClose))}")
