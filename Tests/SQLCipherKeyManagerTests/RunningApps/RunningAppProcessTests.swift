import Foundation
import Testing

@testable import SQLCipherKeyManager

/// `dbkey-example-app`: a running app with a pool, readers and a writer busy, rotating online.
enum ExampleApp {
    static let executable = URL(fileURLWithPath: DBKeyCLITests.executable).deletingLastPathComponent()
        .appendingPathComponent("dbkey-example-app").path

    /// Starts the app with its output going to `output`, a file (a pipe nobody reads would
    /// fill up and stop it).
    static func start(_ arguments: [String], output: String, environment: [String: String]) throws -> Process {
        #expect(FileManager.default.createFile(atPath: output, contents: nil))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = environment
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// The lines the app printed.
    static func lines(_ output: String) throws -> [Substring] {
        String(decoding: try contents(output), as: UTF8.self).split(separator: "\n")
    }

    /// The last entry the app reported committed, 0 for none.
    static func lastCommitted(_ output: String) throws -> Int64 {
        try lines(output).reversed().lazy.compactMap { line in
            line.hasPrefix("committed ") ? Int64(line.dropFirst("committed ".count)) : nil
        }.first ?? 0
    }

    /// Waits until the app prints `line` or stops.
    static func waitFor(_ line: String, in output: String, from process: Process) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
        while process.isRunning && ContinuousClock.now < deadline {
            if try lines(output).contains(where: { $0 == line }) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("dbkey-example-app did not print \"\(line)\"")
    }

    /// Checks the app's tables through a new manager (which settles what a kill left): entries
    /// exactly 1...n with n at least `committed`, and their sum in `total`.
    static func expectLedger(_ manager: DatabaseKeyManager, committed: Int64) async throws -> Int64 {
        let db = UncheckedConnection(try await manager.open())
        let (count, sum, total) = try await offPool {
            defer { db.connection.close() }
            let row = try db.connection.fetchAll("SELECT count(*), coalesce(sum(n), 0), max(n) FROM entry")[0]
            let total = try db.connection.fetchAll("SELECT sum FROM total")[0][0].integerValue
            #expect(row[2].integerValue ?? 0 == row[0].integerValue, "entries are 1...n")
            return (row[0].integerValue ?? -1, row[1].integerValue ?? -1, total ?? -2)
        }
        #expect(count >= committed, "an entry the app reported committed is missing")
        #expect(sum == count * (count + 1) / 2 && sum == total)
        return count
    }
}

extension CrashTests {
    @Test(
        "SIGKILL at random moments of an app rotating online with 4 readers and a writer busy: the next open settles, every committed row is there"
    )
    func killedOnlineRotations() async throws {
        let database = try await TestDatabase(rows: Self.rows)
        let output = database.directory.file("app.out")
        let arguments = [database.path, "--readers", "4", "--rotations", "2"]
        // One run to its end: how long the kills are spread over.
        let clock = ContinuousClock()
        let began = clock.now
        let whole = try ExampleApp.start(arguments, output: output, environment: environment)
        try await offPool { whole.waitUntilExit() }
        var duration = clock.now - began
        #expect(whole.terminationStatus == 0)
        #expect(try ExampleApp.lines(output).contains("rotated 3"))
        var committed = try await ExampleApp.expectLedger(database.manager(), committed: 1)
        var interrupted = 0
        var pendingFound = 0
        var made = 0
        while Self.killsToGo(made: made, interrupted: interrupted) {
            made += 1
            let process = try ExampleApp.start(arguments, output: output, environment: environment)
            let start = clock.now
            let delay = duration * Double.random(in: 0...1.1)
            while process.isRunning && clock.now - start < delay {
                try await Task.sleep(for: .milliseconds(2))
            }
            kill(process.processIdentifier, SIGKILL)
            try await offPool { process.waitUntilExit() }
            if process.terminationReason == .uncaughtSignal {
                interrupted += 1
            } else {
                let tail = try ExampleApp.lines(output).suffix(3)
                #expect(process.terminationStatus == 0, "the app failed: \(tail)")
                duration = clock.now - start
            }
            if try KeyFile.read(from: database.path + ".key").pending != nil
                || FileManager.default.fileExists(atPath: database.path + ".dbkey-rotating")
            {
                pendingFound += 1
            }
            let reported = max(committed, try ExampleApp.lastCommitted(output))
            committed = try await ExampleApp.expectLedger(database.manager(), committed: reported)
            try await database.expectIntact()
        }
        print(
            "kill test (online rotations, pool with 4 readers and a writer, \(Self.rows) rows, one run \(duration)): \(interrupted) of \(made) kills landed mid-run, \(pendingFound) left a journaled rotation or a copy; every open settled it with every committed entry (\(committed) in all)"
        )
        #expect(interrupted >= Self.kills / 2, "only \(interrupted) of \(made) kills interrupted the app")
        #expect(pendingFound >= 3, "only \(pendingFound) kills left a journaled rotation or a copy to recover")
    }

    @Test(
        "dbkey rotate --request: the running app rotates online and dbkey prints its answer; with no app answering it withdraws and changes nothing"
    )
    func rotationRequest() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        let output = workspace.directory.file("app.out")
        // The app runs until the test has seen what it needs (a file appears), however slow
        // a loaded machine makes each step.
        let stop = workspace.directory.file("stop")
        let app = try ExampleApp.start(
            [database, "--readers", "2", "--answer-requests", "--until", stop], output: output,
            environment: workspace.environment)
        try await ExampleApp.waitFor("ready", in: output, from: app)
        let direct = try await workspace.dbkey("rotate", database)
        #expect(direct.status == 30, "the app holds the database: \(direct.stderr)")
        // The advice is the one that can work: waiting never ends a running pool's hold.
        #expect(direct.stderr.contains("dbkey rotate --request"), "\(direct.stderr)")
        let requested = try await workspace.dbkey("rotate", database, "--request", "--wait", "20", "--json")
        #expect(requested.status == 0, "\(requested.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(requested.stdout.utf8)) as? [String: Any])
        #expect(report["dek_version"] as? Int == 2 && report["rotated"] as? Bool == true)
        let atRotation = try ExampleApp.lastCommitted(output)
        try await ExampleApp.waitFor("committed \(atRotation + 1)", in: output, from: app)
        _ = FileManager.default.createFile(atPath: stop, contents: nil)
        try await offPool { app.waitUntilExit() }
        let tail = try ExampleApp.lines(output).suffix(3)
        #expect(app.terminationStatus == 0, "\(tail)")
        let last = try ExampleApp.lastCommitted(output)
        #expect(last > atRotation, "the app went on writing after the rotation")
        #expect(try ExampleApp.lines(output).last == "done \(last)")
        for leftover in [".key.rotate-request", ".key.rotate-claimed", ".key.rotate-result"] {
            #expect(!FileManager.default.fileExists(atPath: database + leftover), "\(leftover) left behind")
        }

        // No app: the request is withdrawn after --wait, and nothing changes.
        let keyBefore = try contents(database + ".key")
        let unanswered = try await workspace.dbkey("rotate", database, "--request", "--wait", "1")
        #expect(unanswered.status == 30 && unanswered.stderr.contains("No app answered"), "\(unanswered.stderr)")
        #expect(!FileManager.default.fileExists(atPath: database + ".key.rotate-request"))
        #expect(try contents(database + ".key") == keyBefore)
        #expect(try await workspace.dbkey("sql", database, "SELECT count(*) FROM entry").stdout.contains("\(last)"))
    }

    @Test(
        "dbkey rotate --request: an app killed after it claimed the request is reported at once (exit 31), within --wait; the next open settles it"
    )
    func requestClaimedThenKilled() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        // About 20 MB, so that the app's rotation takes a while.
        let fill =
            "CREATE TABLE pad(x); WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000) INSERT INTO pad SELECT randomblob(1000) FROM c"
        #expect(try await workspace.dbkey("sql", database, fill).status == 0)
        let output = workspace.directory.file("app.out")
        let app = try ExampleApp.start(
            [database, "--readers", "1", "--answer-requests", "--seconds", "60"], output: output,
            environment: workspace.environment)
        try await ExampleApp.waitFor("ready", in: output, from: app)

        let requester = Process()
        requester.executableURL = URL(fileURLWithPath: DBKeyCLITests.executable)
        requester.arguments = ["rotate", database, "--request", "--wait", "30"]
        requester.environment = workspace.environment
        let stderr = Pipe()
        requester.standardError = stderr
        requester.standardOutput = FileHandle.nullDevice
        try requester.run()
        // Freeze the app the moment it claims the request, then kill it: it never answers.
        let claimed = database + ".key.rotate-claimed"
        let deadline = ContinuousClock.now + .seconds(30)
        while access(claimed, F_OK) != 0 && ContinuousClock.now < deadline && requester.isRunning {
            usleep(500)
        }
        kill(app.processIdentifier, SIGSTOP)
        let answeredFirst = access(database + ".key.rotate-result", F_OK) == 0 || access(claimed, F_OK) != 0
        kill(app.processIdentifier, SIGKILL)
        let clock = ContinuousClock()
        let killedAt = clock.now
        try await offPool {
            requester.waitUntilExit()
            app.waitUntilExit()
        }
        let waited = clock.now - killedAt
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        print(
            "request kill test: the app was killed \(answeredFirst ? "after" : "before") it answered; the requester returned \(waited) later"
        )
        if answeredFirst {
            // The app answered before it was frozen: nothing to report but the rotation.
            #expect(requester.terminationStatus == 0, "\(message)")
        } else {
            #expect(requester.terminationStatus == 31, "\(message)")
            #expect(message.contains("stopped without answering"), "\(message)")
            #expect(waited < .seconds(15), "the requester waited \(waited) after the app was killed")
        }
        #expect(access(claimed, F_OK) != 0, "the abandoned claim was left behind")
        let doctor = try await workspace.dbkey("doctor", database)
        #expect(!doctor.stdout.contains("rotate-claimed"), "\(doctor.stdout)")
        #expect(try await workspace.dbkey("verify", database).status == 0)
        let counted = try await workspace.dbkey("sql", database, "SELECT count(*) FROM pad")
        #expect(counted.stdout == "20000\n", "\(counted.stderr)")
    }
}
