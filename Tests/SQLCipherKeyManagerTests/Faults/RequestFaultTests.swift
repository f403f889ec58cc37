import Foundation
import Testing

@testable import SQLCipherKeyManager

/// Faults in `dbkey rotate --request`, on both sides: in the requester, at each call site of
/// its file system calls, and in the answering app (`dbkey-example-app --answer-requests`), at
/// each site it reaches only while it answers — EIO, ENOSPC, and SIGKILL just before and just
/// after the call, through the fault shim. After each: what the requester reported is what
/// happened, no request is left stuck (the next request is answered), and once the app is gone
/// the database opens with every row.
@Suite("Faults in a rotation request, in the requester and in the answering app", .tags(.engine, .core))
struct RequestFaultTests {
    typealias Template = FaultInjectionTests.Template

    /// Where the fault goes.
    enum Side: String, CaseIterable, Sendable {
        case requester
        case app = "answering app"
    }

    static func environment(_ directory: String) -> [String: String] {
        FaultInjectionTests.environment(directory, master: directory + "/old.key")
    }

    static func startApp(in directory: String, shim: [String: String] = [:]) async throws -> (Process, String) {
        let output = directory + "/app.out"
        let app = try ExampleApp.start(
            [directory + "/app.db", "--readers", "1", "--answer-requests", "--seconds", "300"], output: output,
            environment: environment(directory).merging(shim) { $1 })
        try await ExampleApp.waitFor("ready", in: output, from: app)
        return (app, output)
    }

    static func request(in directory: String, shim: [String: String] = [:]) async throws -> ProcessResult {
        try await run(
            DBKeyCLITests.executable, ["rotate", directory + "/app.db", "--request", "--wait", "20"],
            environment: environment(directory).merging(shim) { $1 })
    }

    static func stop(_ app: Process) async throws {
        if app.isRunning { kill(app.processIdentifier, SIGKILL) }
        try await offPool { app.waitUntilExit() }
    }

    /// The `.key`'s version once no app is carrying out a claimed request, and a running app
    /// has taken any request a killed requester left.
    static func settledVersion(in directory: String, app: Process) async throws -> Int? {
        let database = directory + "/app.db"
        while RotationRequest.claimState(database) == .held
            || (app.isRunning && access(RotationRequest.requestPath(database), F_OK) == 0)
        {
            try await Task.sleep(for: .milliseconds(10))
        }
        return try? KeyFile.read(from: database + ".key").version
    }

    /// The file system calls of one side while a request is made and answered, as (function,
    /// site) pairs; for the app, only the sites it does not reach while it runs without one.
    static func calls(_ side: Side, _ template: Template) async throws -> [(function: String, site: String)] {
        func logged(request: Bool) async throws -> [(function: String, site: String)] {
            let scratch = try TemporaryDirectory()
            try FaultInjectionTests.copyContents(of: template.directory.path, to: scratch.path)
            let logDirectory = try TemporaryDirectory()
            let log = logDirectory.file("calls.log")
            let shim = try FaultInjectionTests.shim(scratch.path, ["FAULTSHIM_LOG": log])
            let (app, output) = try await startApp(in: scratch.path, shim: side == .app ? shim : [:])
            if request {
                let result = try await Self.request(in: scratch.path, shim: side == .requester ? shim : [:])
                #expect(result.status == 0, "a request without a fault: \(result.stderr)")
            } else {
                try await ExampleApp.waitFor("committed 20", in: output, from: app)
            }
            try await stop(app)
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").map {
                let parts = $0.split(separator: " ")
                return (String(parts[0]), String(parts[1]))
            }
        }
        let answering = try await logged(request: true)
        guard side == .app else { return answering }
        let running = Set(try await logged(request: false).map { $0.function + " " + $0.site })
        return answering.filter { !running.contains($0.function + " " + $0.site) }
    }

    @Test(
        "a fault at each call site of a rotation request: the requester tells the truth, nothing is stuck, no row is lost",
        arguments: Side.allCases)
    func faults(side: Side) async throws {
        let template = try await FaultInjectionTests.prepare(.rotateRollback)
        let calls = try await Self.calls(side, template)
        #expect(!calls.isEmpty)
        let (cases, sites) = FaultInjectionTests.cases(calls)
        try await FaultInjectionTests.inject(cases, copying: template.directory.path) { fault, scratch in
            try await Self.expectTruthfulAndUnstuck(
                side, mode: fault.mode, shim: try FaultInjectionTests.shim(scratch, fault.shim), in: scratch,
                case: "\(side.rawValue): \(fault)")
        }
        print(
            "request fault test (\(side.rawValue)): \(calls.count) calls at \(sites) sites; \(cases.count) faults injected (first and last call of each site × \(FaultInjectionTests.modes.joined(separator: ", ")))"
        )
    }

    static func expectTruthfulAndUnstuck(
        _ side: Side, mode: String, shim: [String: String], in directory: String, case description: String
    ) async throws {
        let (app, _) = try await startApp(in: directory, shim: side == .app ? shim : [:])
        let result = try await request(in: directory, shim: side == .requester ? shim : [:])
        let killed = mode.hasPrefix("kill")
        if !killed {
            #expect(result.status != 30, "\(description): an I/O error reported as no app answering: \(result.stderr)")
        }
        // Exit 0: rotated. 33: the app has it, or answered unread. 31: the app stopped, the next
        // open settles it. Any other failure the requester saw itself: nothing changed.
        let appKilled = side == .app && killed
        if appKilled { try await stop(app) }
        let version = try await settledVersion(in: directory, app: app)
        if result.status == 0 {
            #expect(version == 2, "\(description): exit 0, but the .key is at version \(version ?? 0)")
        } else if ![31, 33].contains(result.status) && !(side == .requester && killed) {
            #expect(
                version == 1,
                "\(description): exit \(result.status) (\(result.stderr)), but the key changed to version \(version ?? 0)"
            )
        }
        if app.isRunning {
            // Not stuck: the app answers a later request. The shim counts calls for the app's
            // whole life, so the first may meet a fault meant for the one before: it must
            // tell the truth too.
            var answered = false
            for _ in 0..<2 where !answered {
                let before = try await settledVersion(in: directory, app: app)
                let again = try await request(in: directory)
                let after = try await settledVersion(in: directory, app: app)
                answered = again.status == 0
                #expect(
                    answered ? after == (before ?? 0) + 1 : after == before,
                    "\(description): the next request: exit \(again.status), version \(before ?? 0) → \(after ?? 0): \(again.stderr)"
                )
            }
            #expect(answered, "\(description): no later request was answered")
            try await stop(app)
        } else {
            #expect(appKilled, "\(description): the app stopped: \(app.terminationStatus)")
        }
        // Once the app is gone: every row, a rotation runs, and doctor finds nothing left.
        let checks = FaultInjectionTests.Checks(directory: directory, description: description)
        let count = await checks.expectSuccess("read") { try await checks.rows() }
        #expect(count == Int64(FaultInjectionTests.rows), "\(description): \(String(describing: count)) rows")
        _ = await checks.expectSuccess("rotate (not stuck)") { try await checks.manager().rotateKey() }
        let doctor = await checks.expectSuccess("doctor") { try await checks.doctor() } ?? ""
        #expect(
            !doctor.contains("rotate-claimed") && !doctor.contains("stale-temporary"),
            "\(description): doctor: \(doctor)")
    }
}
