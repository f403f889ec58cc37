import Foundation
@testable import SQLCipherKeyManager
import Testing

/// A fault at every call site of open, write, pwrite, fsync, fdatasync, rename and unlink in
/// every key-changing `dbkey` command — EIO, ENOSPC, and SIGKILL just before and just after
/// the call — through the LD_PRELOAD shim `Scripts/faultshim/faultshim.c`. After each: the
/// database opens with every row, and no command is left stuck.
///
/// CI runs each site's first and last call; `Scripts/fault-sweep` runs every call
/// (`DBKEY_FAULT_SWEEP=every-call`).
@Suite("Faults at every file system call of a key change", .tags(.engine, .core))
struct FaultInjectionTests {
    enum Operation: String, CaseIterable, Sendable {
        case rotateRollback = "rotate (rollback journal)"
        case rotateWAL = "rotate (WAL)"
        case rotateInPlace = "rotate --in-place (rollback journal)"
        case rewrap = "rewrap to another master key"
        case migrate = "migrate --from-plaintext"
        case initialize = "init"
        case upgrade = "upgrade to the SQLCipher 4 format"
        case rotateWithSlots = "rotate with a second master key's slot and an escrow slot"
        case slotAdd = "slot add (a second master key)"
        case recover = "recover through the escrow key"
        case backup = "backup --new-dek"
        case restore = "restore a backup"

        /// The operations the linked SQLCipher can run (upgrade needs SQLCipher 4), narrowed to
        /// those whose name starts with `DBKEY_TEST_FAULT_OPERATION` when it is set.
        static var runnable: [Operation] {
            let sqlcipher4 = ((try? SQLCipherEngine.linked().majorVersion) ?? 0) >= 4
            let only = ProcessInfo.processInfo.environment["DBKEY_TEST_FAULT_OPERATION"] ?? ""
            return allCases.filter { ($0 != .upgrade || sqlcipher4) && $0.rawValue.hasPrefix(only) }
        }
    }

    static let modes = ["EIO", "ENOSPC", "killbefore", "killafter"]
    /// About 2.7 MB: more than two of a rotation's 1 MiB chunks, so that its first and last
    /// copy writes are different calls, made by different workers.
    static let rows = 12_000

    /// A prepared directory for one operation, copied for every case.
    struct Template {
        let directory: TemporaryDirectory
        var database: String { directory.file("app.db") }
        var oldMaster: String { directory.file("old.key") }
        var newMaster: String { directory.file("new.key") }
        /// The master key of the slot operations' second slot.
        var secondMaster: String { directory.file("second.key") }
    }

    static func environment(_ directory: String, master: String) -> [String: String] {
        [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": directory,
            DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable: allowSQLCipher3Databases,
            LocalKms.masterKeyFileVariable: master,
            LocalKms.otherMasterKeyFilesVariable: directory + "/second.key",
        ]
    }

    static func dbkey(
        _ arguments: [String], in directory: String, master: String, shim: [String: String] = [:]
    ) async throws -> ProcessResult {
        try await run(
            DBKeyCLITests.executable, arguments,
            environment: environment(directory, master: master).merging(shim) { $1 })
    }

    static func prepare(_ operation: Operation) async throws -> Template {
        let template = Template(directory: try TemporaryDirectory())
        for path in [template.oldMaster, template.newMaster, template.secondMaster] {
            let key = try SecureBuffer.random(count: 32).withUnsafeBytes { Data($0).base64EncodedString() }
            _ = FileManager.default.createFile(
                atPath: path, contents: Data((key + "\n").utf8), attributes: [.posixPermissions: 0o600])
        }
        let insert =
            "CREATE TABLE t(x); WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < \(rows)) INSERT INTO t SELECT randomblob(200) FROM c"
        let path = template.directory.path
        switch operation {
        case .initialize:
            break
        case .migrate:
            let db = try DatabaseConnection.open(path: template.database, keying: .plaintext, create: true)
            try db.execute(insert)
            db.close()
        case .upgrade:
            // What DBKey made on SQLCipher 3.4.1: the 3 format, with a format 2 .key.
            let master = try String(contentsOfFile: template.oldMaster, encoding: .utf8)
            let kms = try localKms(masterKeyBase64: master.trimmingCharacters(in: .whitespacesAndNewlines))
            try await makeFormat3Database(path: template.database, kms: kms, kekId: LocalKms.defaultKekName)
            #expect(
                try await dbkey(
                    ["sql", template.database, "DROP TABLE t; " + insert], in: path, master: template.oldMaster
                )
                .status == 0)
        case .rotateRollback, .rotateWAL, .rotateInPlace, .rewrap, .slotAdd, .backup, .restore:
            #expect(try await dbkey(["init", template.database], in: path, master: template.oldMaster).status == 0)
            let setup = (operation == .rotateWAL ? "PRAGMA journal_mode = WAL; " : "") + insert
            #expect(
                try await dbkey(["sql", template.database, setup], in: path, master: template.oldMaster).status == 0)
            if operation == .restore {
                let backup = template.directory.file("backup.db")
                #expect(
                    try await dbkey(["backup", template.database, backup], in: path, master: template.oldMaster)
                        .status == 0)
            }
        case .rotateWithSlots, .recover:
            let escrow = template.directory.file("escrow.pem")
            #expect(try await dbkey(["escrow", "keygen", escrow], in: path, master: template.oldMaster).status == 0)
            let slots =
                ["--escrow-public-key", escrow + ".pub"]
                + (operation == .rotateWithSlots ? ["--slot-kek", "local://" + template.secondMaster] : [])
            #expect(
                try await dbkey(["init", template.database] + slots, in: path, master: template.oldMaster).status == 0)
            #expect(
                try await dbkey(["sql", template.database, insert], in: path, master: template.oldMaster).status == 0)
        }
        return template
    }

    static func arguments(_ operation: Operation, _ template: Template, in directory: String) -> [String] {
        let database = directory + "/app.db"
        switch operation {
        case .rotateRollback, .rotateWAL, .rotateWithSlots: return ["rotate", database]
        case .rotateInPlace: return ["rotate", "--in-place", database]
        case .slotAdd: return ["slot", "add", database, "--kek", "local://" + directory + "/second.key"]
        case .backup: return ["backup", database, directory + "/backup.db", "--new-dek"]
        case .restore: return ["restore", directory + "/backup.db", directory + "/restored.db"]
        case .recover:
            return [
                "recover", database, "--escrow-private-key", directory + "/escrow.pem", "--to",
                "local://" + directory + "/new.key",
            ]
        case .rewrap: return ["rewrap", database, "--to", "local://" + directory + "/new.key"]
        case .migrate: return ["migrate", database, "--from-plaintext"]
        case .initialize: return ["init", database]
        case .upgrade: return ["upgrade", database]
        }
    }

    /// The calls the operation makes, in order, as (function, site) pairs.
    static func calls(_ operation: Operation, _ template: Template) async throws -> [(function: String, site: String)] {
        let scratch = try TemporaryDirectory()
        try copyContents(of: template.directory.path, to: scratch.path)
        let logDirectory = try TemporaryDirectory()
        let log = logDirectory.file("calls.log")
        let result = try await dbkey(
            arguments(operation, template, in: scratch.path), in: scratch.path, master: scratch.file("old.key"),
            shim: try shim(scratch.path, ["FAULTSHIM_LOG": log]))
        #expect(result.status == 0, "\(operation.rawValue) without a fault: \(result.stderr)")
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        withExtendedLifetime(logDirectory) {}
        return text.split(separator: "\n").map {
            let parts = $0.split(separator: " ")
            return (String(parts[0]), String(parts[1]))
        }
    }

    static func shim(_ directory: String, _ extra: [String: String]) throws -> [String: String] {
        [
            "LD_PRELOAD": try scriptVariable("DBKEY_TEST_FAULTSHIM", describing: "fault-injection shim"),
            "FAULTSHIM_DIR": directory,
        ].merging(extra) { $1 }
    }

    /// One fault: the `n`-th call of `function` from `site` (a hash of the caller's stack), failed
    /// or killed as `mode` says.
    struct Fault: Sendable, CustomStringConvertible {
        let function: String
        let site: String
        let n: Int
        let mode: String

        /// The shim's settings for it.
        var shim: [String: String] { ["FAULTSHIM_AT": "\(function):\(site):\(n)", "FAULTSHIM_MODE": mode] }
        var description: String { "\(mode) at \(function) #\(n) of site \(site)" }
    }

    /// The faults for `calls` (as the shim logged them): the first and the last call of each
    /// site (every call with `everyCall`), in each of ``modes``; and how many sites there are.
    static func cases(_ calls: [(function: String, site: String)], everyCall: Bool = false) -> (
        faults: [Fault], sites: Int
    ) {
        var occurrences: [String: Int] = [:]
        for call in calls { occurrences[call.function + " " + call.site, default: 0] += 1 }
        var seen = Set<String>()
        var faults: [Fault] = []
        for call in calls where seen.insert(call.function + " " + call.site).inserted {
            let count = occurrences[call.function + " " + call.site]!
            for n in everyCall ? Array(1...count) : Array(Set([1, count])).sorted() {
                faults += modes.map { Fault(function: call.function, site: call.site, n: n, mode: $0) }
            }
        }
        return (faults, seen.count)
    }

    /// Runs `body` for each fault in a scratch copy of `template` (its path), two at a time: a
    /// process each, beside the rest of the suite.
    static func inject(
        _ faults: [Fault], copying template: String, _ body: @escaping @Sendable (Fault, String) async throws -> Void
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            var pending = faults[...]
            func next() {
                guard let fault = pending.popFirst() else { return }
                group.addTask {
                    let scratch = try TemporaryDirectory()
                    try copyContents(of: template, to: scratch.path)
                    try await body(fault, scratch.path)
                }
            }
            for _ in 0..<2 { next() }
            while try await group.next() != nil { next() }
        }
    }

    static func copyContents(of source: String, to destination: String) throws {
        for name in try FileManager.default.contentsOfDirectory(atPath: source) {
            try FileManager.default.copyItem(atPath: source + "/" + name, toPath: destination + "/" + name)
        }
    }

    /// The checks after a fault, made in this process through the library, as `dbkey` makes
    /// them: the fault needs a process of its own (the shim, a kill), the checks do not, and a
    /// `dbkey` process for each (six to nine per fault) was most of the suite's CPU time.
    struct Checks {
        /// The scratch directory: the database, its master key files and what the operation made.
        let directory: String
        /// The case, for messages.
        let description: String

        /// A manager of `name` with the local provider under the master key file `master` and
        /// the second master key as another, configured as ``FaultInjectionTests/environment(_:master:)``
        /// configures `dbkey`.
        func manager(_ name: String = "app.db", master: String = "old.key") throws -> DatabaseKeyManager {
            let variables = FaultInjectionTests.environment(directory, master: directory + "/" + master)
            return DatabaseKeyManager(
                databasePath: directory + "/" + name,
                providers: KmsRegistry(
                    try LocalKms.fromEnvironment(
                        ProviderEnvironment(variables), logger: silentLogger, creatingMissingFile: false)),
                logger: silentLogger)
        }

        /// The rows of `t` in `name`, through an open that settles any record a key change
        /// left (-1 for an answer that is not a count).
        func rows(_ name: String = "app.db", master: String = "old.key") async throws -> Int64 {
            let connection = try await manager(name, master: master).open()
            defer { connection.close() }
            guard case .integer(let count) = try connection.fetchAll("SELECT count(*) FROM t").first?[0] else {
                return -1
            }
            return count
        }

        /// Whether `name` opens under `master` (an open settles any record a key change left).
        func opens(_ name: String = "app.db", master: String = "old.key") async -> Bool {
            guard let connection = try? await manager(name, master: master).open() else { return false }
            connection.close()
            return true
        }

        /// What doctor reports for `name`: each finding's check and message, one a line.
        func doctor(_ name: String = "app.db", master: String = "old.key") async throws -> String {
            try await manager(name, master: master).doctor().findings.map { "\($0.check): \($0.message)" }
                .joined(separator: "\n")
        }

        /// Runs `body`, recording an issue that names the case and `step` when it throws.
        func expectSuccess<Value>(_ step: String, _ body: () async throws -> Value) async -> Value? {
            do {
                return try await body()
            } catch {
                Issue.record("\(description): \(step): \(error)")
                return nil
            }
        }
    }

    /// What `operation` changes, read after an open settled any record a key change left: the
    /// `.key`'s version, primary KEK, format, slot count and pending record, or whether a copy
    /// was placed.
    static func changeSignature(_ operation: Operation, in directory: String) async throws -> String {
        switch operation {
        case .backup: return FileManager.default.fileExists(atPath: directory + "/backup.db") ? "placed" : "none"
        case .restore: return FileManager.default.fileExists(atPath: directory + "/restored.db") ? "placed" : "none"
        default: break
        }
        let checks = Checks(directory: directory, description: operation.rawValue)
        if await !checks.opens() { _ = await checks.opens(master: "new.key") }
        guard let keyFile = try? KeyFile.read(from: directory + "/app.db.key") else { return "no .key" }
        return
            "version \(keyFile.version), \(keyFile.kekId), format \(keyFile.cipher.format), \(keyFile.slots.count) slots\(keyFile.pending == nil ? "" : ", pending")"
    }

    /// ``changeSignature(_:in:)`` of the prepared database, before the operation.
    static func unchangedSignature(_ operation: Operation, _ template: Template) async throws -> String {
        let scratch = try TemporaryDirectory()
        try copyContents(of: template.directory.path, to: scratch.path)
        return try await changeSignature(operation, in: scratch.path)
    }

    /// After a fault: the database opens with every row (with whichever master key the .key
    /// ended under), and the next key change runs.
    static func expectRecovered(
        _ operation: Operation, in directory: String, case description: String
    ) async throws {
        let checks = Checks(directory: directory, description: description)
        let database = directory + "/app.db"
        let hasKeyFile = FileManager.default.fileExists(atPath: database + ".key")
        switch operation {
        case .initialize:
            if !hasKeyFile {
                // Nothing made: init runs again.
                _ = await checks.expectSuccess("init again") { try await checks.manager().initialize() }
            }
            #expect(await checks.opens(), "\(description): does not open")
            return
        case .backup:
            try await expectBackupOutcome(checks)
        case .restore:
            try await expectRestoreOutcome(checks)
            return
        case .migrate where !hasKeyFile:
            // Not migrated: the plaintext original has every row, and migrate runs again.
            let original = try DatabaseConnection.open(path: database, keying: .plaintext)
            #expect(
                try original.fetchAll("SELECT count(*) FROM t").first?[0] == .integer(Int64(rows)), "\(description)")
            original.close()
            _ = await checks.expectSuccess("migrate again") { try await checks.manager().migrate(from: .plaintext) }
        default:
            break
        }
        var master = "old.key"
        if operation == .rewrap || operation == .recover, await !checks.opens() {
            master = "new.key"  // the rewrap or recovery completed: the new master key opens it
        }
        let count = await checks.expectSuccess("read") { try await checks.rows(master: master) }
        #expect(count == Int64(rows), "\(description): \(String(describing: count)) rows")
        _ = await checks.expectSuccess("rotate (not stuck)") { try await checks.manager(master: master).rotateKey() }
        _ = await checks.expectSuccess("verify") { try await checks.manager(master: master).verify() }
        // After a key change and a verify, nothing the fault left is there for doctor to report.
        let doctor = await checks.expectSuccess("doctor") { try await checks.doctor(master: master) } ?? ""
        #expect(
            !doctor.contains("leftover-journal") && !doctor.contains("stale-temporary"),
            "\(description): doctor after rotate and verify: \(doctor)")
    }

    /// What doctor advises for what a fault left (`verify`, which opens the database) leaves
    /// nothing for doctor to report again.
    static func expectDoctorAdviceWorks(in directory: String, case description: String) async throws {
        let checks = Checks(directory: directory, description: description)
        let first = try await checks.doctor()
        let settledByAnOpen = ["leftover-journal", "is the copy of"]
        guard settledByAnOpen.contains(where: first.contains) else { return }
        _ = try? await checks.manager().verify()
        let again = try await checks.doctor()
        #expect(
            !settledByAnOpen.contains(where: again.contains),
            "\(description): doctor after the verify it advised: \(again)")
    }

    /// After a fault in a backup: a backup at the destination is whole (its `.key` beside it,
    /// restoring with every row); a failure the process saw left nothing beside it, and a kill
    /// at most the temporary copy or a `.key` (no database at the destination); a backup to a
    /// new destination runs.
    static func expectBackupOutcome(_ checks: Checks) async throws {
        let (directory, description) = (checks.directory, checks.description)
        let backup = directory + "/backup.db"
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0.hasPrefix("backup.db")
        }
        if FileManager.default.fileExists(atPath: backup) {
            #expect(
                FileManager.default.fileExists(atPath: backup + ".key"), "\(description): a backup without its .key")
            _ = await checks.expectSuccess("restore the backup") {
                try await checks.manager("restored.db").restore(from: backup)
            }
            let count = await checks.expectSuccess("read the restored backup") { try await checks.rows("restored.db") }
            #expect(count == Int64(rows), "\(description): \(String(describing: count)) rows restored")
        } else if description.contains("EIO") || description.contains("ENOSPC") {
            #expect(leftovers == [], "\(description): left \(leftovers)")
        } else {
            // The flushed copy (and its journal), a temporary, a lone .key or the destination's
            // lock file: no data at the destination.
            let unexpected = leftovers.filter {
                !($0.hasPrefix("backup.db.dbkey-backup") || $0.hasPrefix("backup.db.key.tmp.") || $0 == "backup.db.key"
                    || $0 == "backup.db.key.lock")
            }
            #expect(unexpected == [], "\(description): left \(leftovers)")
        }
        _ = await checks.expectSuccess("backup again") {
            try await checks.manager().backup(to: directory + "/again.db")
        }
    }

    /// After a fault in a restore: the target opens with every row (an open completes a
    /// placement the kill interrupted), or holds no database and a restore again puts it there;
    /// a failure the process saw left nothing at the target.
    static func expectRestoreOutcome(_ checks: Checks) async throws {
        let (directory, description) = (checks.directory, checks.description)
        let restored = directory + "/restored.db"
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0.hasPrefix("restored.db")
        }
        if description.contains("EIO") || description.contains("ENOSPC"),
            !FileManager.default.fileExists(atPath: restored)
        {
            #expect(leftovers == [], "\(description): left \(leftovers)")
        }
        var count = try? await checks.rows("restored.db")
        if count == nil {
            #expect(
                !FileManager.default.fileExists(atPath: restored + ".key"),
                "\(description): a .key the open could not complete")
            _ = await checks.expectSuccess("restore again") {
                try await checks.manager("restored.db").restore(from: directory + "/backup.db")
            }
            count = await checks.expectSuccess("read the restored database") { try await checks.rows("restored.db") }
        }
        #expect(count == Int64(rows), "\(description): \(String(describing: count)) rows")
        _ = await checks.expectSuccess("verify") { try await checks.manager("restored.db").verify() }
    }

    @Test(
        "a fault at each call site leaves a database that opens with every row, and no command stuck",
        arguments: Operation.runnable)
    func faults(operation: Operation) async throws {
        let template = try await Self.prepare(operation)
        let calls = try await Self.calls(operation, template)
        #expect(!calls.isEmpty)
        let everyCall = ProcessInfo.processInfo.environment["DBKEY_FAULT_SWEEP"] == "every-call"
        let (cases, sites) = Self.cases(calls, everyCall: everyCall)
        let before = try await Self.unchangedSignature(operation, template)
        try await Self.inject(cases, copying: template.directory.path) { fault, scratch in
            let description = "\(operation.rawValue): \(fault)"
            let result = try await Self.dbkey(
                Self.arguments(operation, template, in: scratch), in: scratch, master: scratch + "/old.key",
                shim: try Self.shim(scratch, fault.shim))
            if fault.mode == "EIO" || fault.mode == "ENOSPC" {
                // No other process is there: an I/O error is never reported as one.
                #expect(result.status != 30, "\(description): reported in use: \(result.stderr)")
                // What the command said is what is true once an open has settled the journal.
                let after = try await Self.changeSignature(operation, in: scratch)
                if result.status == 0 || result.status == 33 {
                    #expect(after != before, "\(description): exit \(result.status), but nothing changed")
                } else {
                    #expect(
                        after == before,
                        "\(description): exit \(result.status) (\(result.stderr)), but the change took effect: \(before) → \(after)"
                    )
                }
            }
            if operation == .rotateInPlace || operation == .rotateRollback {
                try await Self.expectDoctorAdviceWorks(in: scratch, case: description)
            }
            try await Self.expectRecovered(operation, in: scratch, case: description)
        }
        print(
            "fault test (\(operation.rawValue)): \(calls.count) calls at \(sites) sites; \(cases.count) faults injected (\(everyCall ? "every call" : "first and last call of each site") × \(Self.modes.joined(separator: ", ")))"
        )
    }
}
