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
@Suite("Faults at every file system call of a key change", .tags(.engine))
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

    /// What `operation` changes, read after an open settled any record a key change left: the
    /// `.key`'s version, primary KEK, format, slot count and pending record, or whether a copy
    /// was placed.
    static func changeSignature(_ operation: Operation, in directory: String) async throws -> String {
        let database = directory + "/app.db"
        switch operation {
        case .backup: return FileManager.default.fileExists(atPath: directory + "/backup.db") ? "placed" : "none"
        case .restore: return FileManager.default.fileExists(atPath: directory + "/restored.db") ? "placed" : "none"
        default: break
        }
        for master in ["old.key", "new.key"] {
            let read = try await dbkey(
                ["sql", database, "SELECT count(*) FROM sqlite_master"], in: directory, master: directory + "/" + master
            )
            if read.status == 0 { break }
        }
        guard let keyFile = try? KeyFile.read(from: database + ".key") else { return "no .key" }
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
        let database = directory + "/app.db"
        let old = directory + "/old.key"
        let new = directory + "/new.key"
        let hasKeyFile = FileManager.default.fileExists(atPath: database + ".key")
        switch operation {
        case .initialize:
            if !hasKeyFile {
                // Nothing made: init runs again.
                let again = try await dbkey(["init", database], in: directory, master: old)
                #expect(again.status == 0, "\(description): init again: \(again.stderr)")
            }
            let opened = try await dbkey(
                ["sql", database, "SELECT count(*) FROM sqlite_master"], in: directory, master: old)
            #expect(opened.status == 0, "\(description): \(opened.stderr)")
            return
        case .backup:
            try await expectBackupOutcome(in: directory, case: description)
        case .restore:
            try await expectRestoreOutcome(in: directory, case: description)
            return
        case .migrate where !hasKeyFile:
            // Not migrated: the plaintext original has every row, and migrate runs again.
            let original = try DatabaseConnection.open(path: database, keying: .plaintext)
            #expect(
                try original.fetchAll("SELECT count(*) FROM t").first?[0] == .integer(Int64(rows)), "\(description)")
            original.close()
            let again = try await dbkey(["migrate", database, "--from-plaintext"], in: directory, master: old)
            #expect(again.status == 0, "\(description): migrate again: \(again.stderr)")
        default:
            break
        }
        var master = old
        var read = try await dbkey(["sql", database, "SELECT count(*) FROM t"], in: directory, master: master)
        if operation == .rewrap || operation == .recover, read.status == 22 {
            master = new  // the rewrap or recovery completed: the new master key opens it
            read = try await dbkey(["sql", database, "SELECT count(*) FROM t"], in: directory, master: master)
        }
        #expect(read.status == 0 && read.stdout == "\(rows)\n", "\(description): \(read.status) \(read.stderr)")
        let rotated = try await dbkey(["rotate", database], in: directory, master: master)
        #expect(rotated.status == 0, "\(description): not stuck: \(rotated.stderr)")
        let verified = try await dbkey(["verify", database], in: directory, master: master)
        #expect(verified.status == 0, "\(description): \(verified.stderr)")
        // After a key change and a verify, nothing the fault left is there for doctor to report.
        let doctor = try await dbkey(["doctor", database, "--json"], in: directory, master: master)
        #expect(
            !doctor.stdout.contains("leftover-journal") && !doctor.stdout.contains("stale-temporary"),
            "\(description): doctor after rotate and verify: \(doctor.stdout)")
    }

    /// What doctor advises for what a fault left (`verify`, which opens the database) leaves
    /// nothing for doctor to report again.
    static func expectDoctorAdviceWorks(in directory: String, case description: String) async throws {
        let database = directory + "/app.db"
        let master = directory + "/old.key"
        let first = try await dbkey(["doctor", database, "--json"], in: directory, master: master)
        let settledByAnOpen = ["leftover-journal", "is the copy of"]
        guard settledByAnOpen.contains(where: first.stdout.contains) else { return }
        _ = try await dbkey(["verify", database], in: directory, master: master)
        let again = try await dbkey(["doctor", database, "--json"], in: directory, master: master)
        #expect(
            !settledByAnOpen.contains(where: again.stdout.contains),
            "\(description): doctor after the verify it advised: \(again.stdout)")
    }

    /// After a fault in a backup: a backup at the destination is whole (its `.key` beside it,
    /// restoring with every row); a failure the process saw left nothing beside it, and a kill
    /// at most the temporary copy or a `.key` (no database at the destination); a backup to a
    /// new destination runs.
    static func expectBackupOutcome(in directory: String, case description: String) async throws {
        let backup = directory + "/backup.db"
        let old = directory + "/old.key"
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0.hasPrefix("backup.db")
        }
        if FileManager.default.fileExists(atPath: backup) {
            #expect(
                FileManager.default.fileExists(atPath: backup + ".key"), "\(description): a backup without its .key")
            let restored = try await dbkey(["restore", backup, directory + "/restored.db"], in: directory, master: old)
            #expect(restored.status == 0, "\(description): \(restored.stderr)")
            let read = try await dbkey(
                ["sql", directory + "/restored.db", "SELECT count(*) FROM t"], in: directory, master: old)
            #expect(read.stdout == "\(rows)\n", "\(description): \(read.stderr)")
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
        let again = try await dbkey(
            ["backup", directory + "/app.db", directory + "/again.db"], in: directory, master: old)
        #expect(again.status == 0, "\(description): backup again: \(again.stderr)")
    }

    /// After a fault in a restore: the target opens with every row (an open completes a
    /// placement the kill interrupted), or holds no database and a restore again puts it there;
    /// a failure the process saw left nothing at the target.
    static func expectRestoreOutcome(in directory: String, case description: String) async throws {
        let restored = directory + "/restored.db"
        let old = directory + "/old.key"
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory).filter {
            $0.hasPrefix("restored.db")
        }
        if description.contains("EIO") || description.contains("ENOSPC"),
            !FileManager.default.fileExists(atPath: restored)
        {
            #expect(leftovers == [], "\(description): left \(leftovers)")
        }
        var read = try await dbkey(["sql", restored, "SELECT count(*) FROM t"], in: directory, master: old)
        if read.status != 0 {
            #expect(
                !FileManager.default.fileExists(atPath: restored + ".key"),
                "\(description): a .key the open could not complete: \(read.stderr)")
            let again = try await dbkey(["restore", directory + "/backup.db", restored], in: directory, master: old)
            #expect(again.status == 0, "\(description): restore again: \(again.stderr)")
            read = try await dbkey(["sql", restored, "SELECT count(*) FROM t"], in: directory, master: old)
        }
        #expect(read.status == 0 && read.stdout == "\(rows)\n", "\(description): \(read.status) \(read.stderr)")
        let verified = try await dbkey(["verify", restored], in: directory, master: old)
        #expect(verified.status == 0, "\(description): \(verified.stderr)")
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
