import DBKeyGRDB
import Foundation
import GRDB
import SQLCipherKeyManager
import Testing

/// `dbkey-grdb-example-app`, a GRDB app with readers and a writer busy, killed with SIGKILL at
/// random moments while it rotates online.
@Suite("A GRDB app killed during online rotations", .tags(.grdb))
struct CrashTests {
    static let kills = 24
    static let rows = 30_000

    /// Starts the app with its output going to a file (a pipe nobody reads would fill up and
    /// stop it).
    static func start(_ arguments: [String], output: String, environment: [String: String]) throws -> Process {
        #expect(FileManager.default.createFile(atPath: output, contents: nil))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Built.exampleApp)
        process.arguments = arguments
        process.environment = environment
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// The last entry the app reported committed, 0 for none.
    static func lastCommitted(_ output: String) throws -> Int {
        let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: output)), as: UTF8.self)
        return text.split(separator: "\n").reversed().lazy.compactMap { line in
            line.hasPrefix("committed ") ? Int(line.dropFirst("committed ".count)) : nil
        }.first ?? 0
    }

    /// Opens the database through a new pool (which settles what a kill left): entries exactly
    /// 1...n with n at least `committed`, their sum in `total`, and the padding whole.
    static func expectLedger(_ workspace: Workspace, committed: Int) async throws -> Int {
        let pool = try await KeyedDatabasePool(manager: try workspace.manager())
        let (count, sum, highest, total, padding, integrity) = try await pool.read { db in
            let row = try Row.fetchOne(db, sql: "SELECT count(*), coalesce(sum(n), 0), coalesce(max(n), 0) FROM entry")!
            return (
                row[0] as Int, row[1] as Int, row[2] as Int, try Int.fetchOne(db, sql: "SELECT sum FROM total") ?? -1,
                try Int.fetchOne(db, sql: "SELECT count(*) FROM pad") ?? -1,
                try String.fetchOne(db, sql: "PRAGMA quick_check") ?? ""
            )
        }
        try await pool.close()
        #expect(highest == count, "entries are 1...n")
        #expect(count >= committed, "an entry the app reported committed is missing")
        #expect(sum == count * (count + 1) / 2 && sum == total)
        #expect(padding == rows && integrity == "ok")
        return count
    }

    @Test(
        "SIGKILL at random moments of a GRDB app rotating online: the next open settles, every committed row is there")
    func killedOnlineRotations() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        let setup = try await KeyedDatabasePool(manager: try workspace.manager())
        try await setup.write { db in
            try db.execute(
                sql:
                    "CREATE TABLE pad(x); WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < \(Self.rows)) INSERT INTO pad SELECT randomblob(200) FROM c"
            )
        }
        try await setup.close()
        let output = workspace.path + "/app.out"
        let arguments = [database, "2", "2"]
        // One run to its end: how long the kills are spread over.
        let clock = ContinuousClock()
        let began = clock.now
        let whole = try Self.start(arguments, output: output, environment: workspace.environment)
        await withCheckedContinuation { continuation in
            Thread {
                whole.waitUntilExit()
                continuation.resume()
            }.start()
        }
        var duration = clock.now - began
        #expect(whole.terminationStatus == 0)
        var committed = try await Self.expectLedger(workspace, committed: 1)
        var interrupted = 0
        var pendingFound = 0
        for _ in 0..<Self.kills {
            let process = try Self.start(arguments, output: output, environment: workspace.environment)
            let start = clock.now
            let delay = duration * Double.random(in: 0...1.1)
            while process.isRunning && clock.now - start < delay {
                try await Task.sleep(for: .milliseconds(2))
            }
            kill(process.processIdentifier, SIGKILL)
            await withCheckedContinuation { continuation in
                Thread {
                    process.waitUntilExit()
                    continuation.resume()
                }.start()
            }
            if process.terminationReason == .uncaughtSignal {
                interrupted += 1
            } else {
                #expect(process.terminationStatus == 0, "the app failed")
                duration = clock.now - start
            }
            if try KeyFile.read(from: KeyFile.path(forDatabase: database)).pendingChange != nil
                || FileManager.default.fileExists(atPath: database + ".dbkey-rotating")
            {
                pendingFound += 1
            }
            committed = try await Self.expectLedger(
                workspace, committed: max(committed, try Self.lastCommitted(output)))
        }
        print(
            "kill test (GRDB app, 2 readers and a writer, \(Self.rows) rows, one run \(duration)): \(interrupted)/\(Self.kills) kills landed mid-run, \(pendingFound) left a journaled rotation or a copy; every open settled it with every committed entry (\(committed) in all)"
        )
        #expect(interrupted >= Self.kills / 2, "only \(interrupted) of \(Self.kills) kills interrupted the app")
        #expect(pendingFound >= 3, "only \(pendingFound) kills left a journaled rotation or a copy to recover")
    }
}
