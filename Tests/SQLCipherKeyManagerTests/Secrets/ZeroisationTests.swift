import Foundation
import Testing

@testable import SQLCipherKeyManager

/// Runs `dbkey-memory-audit`, which counts the copies of each key in a process's memory by place:
/// `locked` (DBKey's locked, dump-excluded pages), `engine` (memory SQLite or OpenSSL allocated,
/// told apart by the engine arena `Scripts/test` builds) and `elsewhere` (a copy DBKey or the code
/// above it made: the count that must be 0).
@Suite("Zeroisation, measured in process memory", .tags(.engine, .core))
struct ZeroisationTests {
    static let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    static let audit = directory.appendingPathComponent("dbkey-memory-audit").path
    static let exampleApp = directory.appendingPathComponent("dbkey-example-app").path

    /// Counts per pattern (`dek_v2_raw`, `master_base64`, …), per place.
    typealias Counts = [String: [String: Int]]

    /// A workspace with a random master key: the tests' usual one (bytes 0 to 31 in order) is a
    /// run of bytes tables in any program hold.
    static func workspace() throws -> DBKeyCLITests.Workspace {
        try DBKeyCLITests.Workspace(
            masterKeyBase64: Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString())
    }

    static func engineArena() throws -> String {
        try scriptVariable("DBKEY_TEST_ENGINE_ARENA", describing: "engine arena for the memory audit")
    }

    static func decode(_ output: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
    }

    /// One stop of a `watch`: the `.key`'s version then, and the counts.
    static func stops(_ report: [String: Any]) throws -> [(reason: String, version: Int, counts: Counts)] {
        let stops = try #require(report["stops"] as? [[String: Any]])
        return try stops.map {
            (
                try #require($0["reason"] as? String), try #require($0["version"] as? Int),
                try #require($0["counts"] as? Counts)
            )
        }
    }

    /// No copy of any key outside locked pages and the engine's memory.
    static func expectNoCopyElsewhere(_ counts: Counts, at stop: String) {
        for (pattern, places) in counts {
            #expect(places["elsewhere"] == 0, "\(places["elsewhere"] ?? -1) copies of \(pattern) elsewhere at \(stop)")
        }
    }

    @Test("this process: keys are found while in use, the old key is gone after rotation, nothing is left after close")
    func audit() async throws {
        let directory = try TemporaryDirectory()
        let result = try await run(
            Self.audit, ["self", directory.path],
            environment: ProcessInfo.processInfo.environment.merging(["LD_PRELOAD": try Self.engineArena()]) { $1 })
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.decode(result.stdout)
        let whileOpen = try #require(report["while_open"] as? Counts)
        let afterClose = try #require(report["after_close"] as? Counts)
        print("memory audit of this process: while open \(whileOpen), after close \(afterClose)")
        // Not vacuous: the scan sees the key in DBKey's locked pages and in SQLCipher's memory
        // (raw, and as hex in its keyspec).
        #expect(whileOpen["new_raw"]?["locked", default: 0] ?? 0 >= 1)
        #expect(whileOpen["new_raw"]?["engine", default: 0] ?? 0 >= 1)
        #expect(whileOpen["new_hex"]?["engine", default: 0] ?? 0 >= 1)
        Self.expectNoCopyElsewhere(whileOpen, at: "while open")
        // Rotation wiped the old key at once.
        for form in ["old_raw", "old_hex", "old_HEX"] {
            #expect(whileOpen[form]?["locked"] == 0, "\(form) still in locked memory after rotation")
        }
        // Everything closed and released: no copy of either key, in any form, anywhere.
        #expect(afterClose.count == 6)
        for (form, places) in afterClose {
            #expect(places.values.reduce(0, +) == 0, "copies of \(form) left after close: \(places)")
        }
    }

    @Test("dbkey stopped in the middle of a rotation's copy holds no key outside locked and engine memory")
    func dbkeyMidRotation() async throws {
        let workspace = try Self.workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        // About 12 MB: the copy is written in 1 MiB chunks, so the sixth write is in its middle.
        let filled = try await workspace.dbkey(
            "sql", database,
            "CREATE TABLE blob(b BLOB); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 12000) INSERT INTO blob SELECT randomblob(1000) FROM n"
        )
        #expect(filled.status == 0, "\(filled.stderr)")
        let environment = workspace.environment.merging([
            "FAULTSHIM_DIR": workspace.directory.path, "FAULTSHIM_AT": "pwrite:*:6", "FAULTSHIM_MODE": "stopbefore",
        ]) { $1 }
        let result = try await run(
            Self.audit,
            [
                "watch", database, "--preload", try scriptVariable("DBKEY_TEST_FAULTSHIM", describing: "fault shim"),
                "--preload", try Self.engineArena(), "--", DBKeyCLITests.executable, "rotate", database,
            ], environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.decode(result.stdout)
        #expect(report["status"] as? Int == 0, "dbkey rotate did not finish after the stop: \(result.stderr)")
        let stops = try Self.stops(report)
        try #require(stops.count == 1)
        let stop = stops[0]
        print("memory audit of dbkey stopped mid-rotation: \(stop.counts)")
        // In the middle of the rotation from version 1 to 2: the .key still names version 1, and
        // both keys are in use (the new one was learned from the .key after the rotation).
        #expect(stop.version == 1)
        for version in [1, 2] {
            #expect(
                stop.counts["dek_v\(version)_raw"]?["locked", default: 0] ?? 0 >= 1, "version \(version) not in use")
            #expect(stop.counts["dek_v\(version)_raw"]?["engine", default: 0] ?? 0 >= 1)
        }
        #expect(stop.counts["master_raw"]?["locked"] == 1)
        Self.expectNoCopyElsewhere(stop.counts, at: "the stop")
        // DBKey's own use of OpenSSL for the master key leaves no working copy behind.
        for form in ["master_raw", "master_hex", "master_HEX", "master_base64"] {
            #expect(stop.counts[form]?["engine"] == 0, "\(form) in the engine's memory")
        }
        #expect(stop.counts["master_base64"]?.values.reduce(0, +) == 0)
    }

    @Test("the example app, stopped while its pool serves readers and a writer across rotations")
    func exampleApp() async throws {
        let workspace = try Self.workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        let result = try await run(
            Self.audit,
            [
                "watch", database, "--preload", try Self.engineArena(), "--stop-on-line", "ready", "--stop-on-line",
                "rotated 2", "--stop-on-line", "rotated 3", "--", Self.exampleApp, database, "--rotations", "2",
                "--seconds", "0.1",
            ], environment: workspace.environment)
        #expect(result.status == 0, "\(result.stderr)")
        let report = try Self.decode(result.stdout)
        #expect(report["status"] as? Int == 0, "the example app failed: \(result.stderr)")
        let stops = try Self.stops(report)
        #expect(stops.map(\.reason) == ["line: ready", "line: rotated 2", "line: rotated 3"])
        #expect(stops.map(\.version) == [1, 2, 3])
        for stop in stops {
            print(
                "memory audit of the example app at \(stop.reason): \(stop.counts.filter { $0.value.values.contains { $0 > 0 } })"
            )
            // The pool's connections hold the current key; DBKey holds it locked.
            #expect(stop.counts["dek_v\(stop.version)_raw"]?["locked", default: 0] ?? 0 >= 1)
            #expect(stop.counts["dek_v\(stop.version)_raw"]?["engine", default: 0] ?? 0 >= 1)
            Self.expectNoCopyElsewhere(stop.counts, at: stop.reason)
            // Keys rotated away are wiped from DBKey's memory.
            for version in 1..<stop.version {
                #expect(stop.counts["dek_v\(version)_raw"]?["locked"] == 0, "version \(version) kept at \(stop.reason)")
            }
            #expect(stop.counts["master_base64"]?.values.reduce(0, +) == 0)
        }
    }
}
