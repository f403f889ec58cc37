import Foundation
import Testing

/// Runs `dbkey-memory-audit`, a program that scans its own memory for the data keys it used.
@Suite("Zeroisation, measured in process memory")
struct ZeroisationTests {
    static let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        .deletingLastPathComponent().appendingPathComponent("dbkey-memory-audit").path

    @Test("keys are found while in use, the old key is gone after rotation, and no copy is left after close")
    func audit() async throws {
        let directory = try TemporaryDirectory()
        let result = try await run(Self.executable, [directory.path])
        #expect(result.status == 0, "\(result.stderr)")
        let report = try #require(
            try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: [String: Int]])
        let whileOpen = try #require(report["while_open"])
        let afterClose = try #require(report["after_close"])
        print("memory audit: while open \(whileOpen), after close \(afterClose)")
        // Not vacuous: the scan sees the key in use, in raw and in hex form (SQLCipher's copies).
        #expect(whileOpen["new_raw", default: 0] >= 1)
        #expect(whileOpen["new_hex", default: 0] >= 1)
        // Rotation wiped the old key at once.
        for form in ["old_raw", "old_hex", "old_HEX"] {
            #expect(whileOpen[form] == 0, "\(form) still in memory after rotation")
        }
        // Everything closed and released: no copy of either key, in any form.
        #expect(afterClose.count == 6)
        for (form, count) in afterClose {
            #expect(count == 0, "\(count) copies of \(form) left after close")
        }
    }
}
