import Foundation
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// `dbkey escrow`, `slot`, `recover` and `doctor` as processes, and escrow slots opened by
/// independent implementations (pyhpke, OpenSSL, the `sqlcipher` shell).
@Suite("Key slot commands, escrow interop and doctor", .tags(.cli))
struct SlotCommandTests {
    typealias Workspace = DBKeyCLITests.Workspace

    func pythonOpensEscrow(_ keyFile: String, privateKey: String, slot: Int, pending: Bool = false) async throws
        -> SecureBuffer
    {
        let python = try requireTool("python3", installedBy: "python3")
        let result = try await run(
            python,
            [repositoryRoot.path + "/Scripts/interop/escrow_open.py", keyFile, privateKey, String(slot)]
                + (pending ? ["pending"] : []))
        #expect(result.status == 0, "escrow_open.py failed: \(result.stderr)")
        return secureBuffer(hex: result.stdout)
    }

    @Test(
        "escrow interop: pyhpke opens the slot from the README's description, the shell opens the database with it, OpenSSL reads and makes the keys"
    )
    func escrowInterop() async throws {
        let openssl = try requireTool("openssl", installedBy: "openssl")
        let workspace = try Workspace()
        let database = workspace.database
        let ours = workspace.directory.file("escrow.pem")
        let made = try await workspace.dbkey("escrow", "keygen", ours)
        #expect(made.status == 0, "\(made.stderr)")
        let mode = try FileManager.default.attributesOfItem(atPath: ours)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        // OpenSSL reads our private key and derives the public key we wrote.
        let derived = try await run(openssl, ["pkey", "-in", ours, "-pubout"])
        let publicPEM = try String(contentsOfFile: ours + ".pub", encoding: .utf8)
        #expect(derived.status == 0 && derived.stdout == publicPEM)
        // And OpenSSL makes a key DBKey takes.
        let theirs = workspace.directory.file("openssl.pem")
        #expect(try await run(openssl, ["genpkey", "-algorithm", "X25519", "-out", theirs]).status == 0)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: theirs)
        #expect(try await run(openssl, ["pkey", "-in", theirs, "-pubout", "-out", theirs + ".pub"]).status == 0)

        let created = try await workspace.dbkey(
            "init", database, "--context", "tenant=ünïcode", "--context", "app=notes", "--escrow-public-key",
            ours + ".pub")
        #expect(created.status == 0, "\(created.stderr)")
        #expect(
            try await workspace.dbkey("sql", database, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)").status == 0)
        let added = try await workspace.dbkey("slot", "add", database, "--escrow-public-key", theirs + ".pub")
        #expect(added.status == 0, "\(added.stderr)")
        #expect(try await workspace.dbkey("rotate", database).status == 0)
        let keyFile = try KeyFile.read(from: database + ".key")
        #expect(keyFile.version == 2 && keyFile.slots.map(\.number) == [1, 2])

        let manager = DatabaseKeyManager(
            databasePath: database, kms: try localKms(), configuration: .init(keyCacheTTL: .zero), logger: silentLogger)
        let dataKey = try await manager.dataKey()
        for (slot, privateKey) in [(1, ours), (2, theirs)] {
            let opened = try await pythonOpensEscrow(database + ".key", privateKey: privateKey, slot: slot)
            #expect(opened == dataKey, "pyhpke's key from slot \(slot) differs")
            #expect(try await sqlcipherShellOpensDatabase(database, key: opened, cipher: keyFile.cipher))
        }
        // The OpenSSL key recovers the database under a new master key.
        let newMaster = try DBKeyCLITests.masterKeyFile(workspace, "new-master.key")
        let recovered = try await workspace.dbkey(
            "recover", database, "--escrow-private-key", theirs, "--to", "local://" + newMaster.path)
        #expect(recovered.status == 0, "\(recovered.stderr)")
        let counted = try await workspace.dbkey(
            "sql", database, "SELECT count(*) FROM t", environment: [LocalKms.masterKeyFileVariable: newMaster.path])
        #expect(counted.stdout == "2\n", "\(counted.stderr)")
    }

    @Test("recover --recovery-code-stdin after the master key file is gone; a mistyped code names its group")
    func recoverWithCode() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        let escrow = workspace.directory.file("escrow.pem")
        let made = try await workspace.dbkey("escrow", "keygen", escrow, "--recovery-code")
        // Standard output is the code alone, as recover --recovery-code-stdin reads it.
        let code = made.stdout.trimmingCharacters(in: .newlines)
        #expect(code.count == 77 && code.split(separator: "-").count == 13, "\(made.stdout)")
        #expect(made.stderr.contains("recovery code follows"))
        try FileManager.default.removeItem(atPath: escrow)  // only the code is kept
        #expect(try await workspace.dbkey("init", database, "--escrow-public-key", escrow + ".pub").status == 0)
        #expect(try await workspace.dbkey("sql", database, "CREATE TABLE t(x); INSERT INTO t VALUES (7)").status == 0)
        try FileManager.default.removeItem(atPath: try #require(workspace.environment[LocalKms.masterKeyFileVariable]))
        #expect(try await workspace.dbkey("sql", database, "SELECT x FROM t").status == 14)

        let newMaster = try DBKeyCLITests.masterKeyFile(workspace, "new-master.key")
        var typo = Array(code)
        typo[8] = typo[8] == "A" ? "B" : "A"  // group 2
        let mistyped = try await workspace.dbkey(
            ["recover", database, "--recovery-code-stdin", "--to", "local://" + newMaster.path], input: String(typo))
        #expect(mistyped.status == 42 && mistyped.stderr.contains("Group 2 of the recovery code"))
        #expect(!mistyped.stderr.contains(code) && !mistyped.stderr.contains(String(typo)))
        // keygen's whole standard output, as a pipe would give it.
        let recovered = try await workspace.dbkey(
            ["recover", database, "--recovery-code-stdin", "--to", "local://" + newMaster.path], input: made.stdout)
        #expect(recovered.status == 0, "\(recovered.stderr)")
        #expect(!recovered.stdout.contains(code) && !recovered.stderr.contains(code))
        let read = try await workspace.dbkey(
            "sql", database, "SELECT x FROM t", environment: [LocalKms.masterKeyFileVariable: newMaster.path])
        #expect(read.stdout == "7\n", "\(read.stderr)")
    }

    @Test("slot add, list, remove and rewrap --slot through the CLI, with a second master key")
    func slotCommands() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        let second = try DBKeyCLITests.masterKeyFile(workspace, "second.key")
        let both = [LocalKms.otherMasterKeyFilesVariable: second.path]
        #expect(try await workspace.dbkey("init", database, "--slot-kek", "local://" + second.path).status == 0)
        let status = try await workspace.dbkey("status", database, "--json")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect((report["slots"] as? [[String: Any]])?.first?["slot"] as? Int == 1)
        let listed = try await workspace.dbkey("slot", "list", database, "--json")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [String: Any])
        let slots = try #require(object["slots"] as? [[String: Any]])
        #expect(slots.map { $0["kek_id"] as? String } == [try localKms().kekId, LocalKms.kekId(for: second.key)])
        // A rotation needs the second master key too; without it, it stops before any change.
        let before = try contents(database + ".key")
        let refused = try await workspace.dbkey("rotate", database)
        #expect(refused.status == 22 && refused.stderr.contains("Key slot 1"))
        #expect(try contents(database + ".key") == before)
        #expect(try await workspace.dbkey(["rotate", database], environment: both).status == 0)
        // Rewrap slot 1 under a third master key; the second no longer opens it.
        let third = try DBKeyCLITests.masterKeyFile(workspace, "third.key")
        let rewrapped = try await workspace.dbkey(
            ["rewrap", database, "--slot", "1", "--to", "local://" + third.path], environment: both)
        #expect(rewrapped.status == 0, "\(rewrapped.stderr)")
        #expect(try KeyFile.read(from: database + ".key").slots.first?.kekId == LocalKms.kekId(for: third.key))
        let removed = try await workspace.dbkey("slot", "remove", database, "1")
        #expect(removed.status == 0 && removed.stderr.contains("older copy of that file"))
        #expect(try KeyFile.read(from: database + ".key").slots.isEmpty)
        #expect(
            try KeyFile.read(from: database + ".key").format == 3, "a file without slots stays readable by older DBKey")
    }

    @Test("the primary AWS KMS unreachable (nothing listening): the database opens through its local slot")
    func awsOutageOpensThroughLocalSlot() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db")
        let aws = try Moto.provider()
        let local = try localKms()
        let sink = RecordingAuditSink()
        let creating = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(providers: [aws, local]),
            configuration: .init(kekId: try Moto.keyArn(), kekProvider: "aws"), logger: silentLogger)
        try await creating.initialize()
        try await creating.addSlot(local, kekId: LocalKms.defaultKekName)
        // The same AWS client, pointed where no server answers: what an outage looks like to it.
        let down = AWSKms(
            credentials: try Moto.credentials(), region: try Moto.value("REGION"),
            endpoint: URL(string: "http://127.0.0.1:9"), retry: .init(attempts: 1, timeout: .seconds(2)),
            logger: silentLogger)
        let manager = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(providers: [down, local]),
            configuration: .init(keyCacheTTL: .zero, auditSink: sink), logger: silentLogger)
        try await manager.open().close()
        #expect(sink.events.contains { $0.kind == .slotUsed && $0.provider == "local" })
    }

    @Test("doctor: all is well on a database just written; each problem made by hand is reported with its fix")
    func doctor() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database, "--rotation-days", "30").status == 0)
        #expect(
            try await workspace.dbkey(
                "sql", database, "PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1)"
            ).status == 0)
        let healthy = try await workspace.dbkey("doctor", database)
        #expect(healthy.status == 0 && healthy.stdout.contains("all is well"), "\(healthy.stdout)")

        func checks(_ extra: [String] = [], environment: [String: String] = [:]) async throws -> [String] {
            let result = try await workspace.dbkey(["doctor", database, "--json"] + extra, environment: environment)
            let report = try #require(
                try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            let findings = try #require(report["findings"] as? [[String: String]])
            #expect(findings.allSatisfy { !($0["fix"] ?? "").isEmpty })
            #expect(result.status == (findings.isEmpty ? 0 : 1))
            return findings.compactMap { $0["check"] }
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: database)
        #expect(try await checks() == ["file-mode"])
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: database)

        if geteuid() == 0 {
            // Another owner (only root can give a file away).
            #expect(chown(database + ".key.lock", 12_345, 12_345) == 0)
            #expect(try await checks() == ["file-mode"])
            #expect(chown(database + ".key.lock", 0, 0) == 0)
        }

        #expect(FileManager.default.createFile(atPath: database + ".key.tmp.1234", contents: Data("{".utf8)))
        #expect(try await checks() == ["stale-temporary"])
        try FileManager.default.removeItem(atPath: database + ".key.tmp.1234")

        #expect(
            FileManager.default.createFile(
                atPath: database + "-wal", contents: Data(count: 4096), attributes: [.posixPermissions: 0o600]))
        #expect(try await checks() == ["leftover-journal"])
        try FileManager.default.removeItem(atPath: database + "-wal")

        // Room for a rotation: a file-size limit below the database's size.
        let shell = try requireTool("sh", installedBy: "dash")
        let limited = try await run(
            shell, ["-c", "ulimit -f 4; exec \"$0\" doctor \"$1\" --json", DBKeyCLITests.executable, database],
            environment: workspace.environment)
        #expect(limited.status == 1 && limited.stdout.contains("\"disk-space\""), "\(limited.stdout)")

        // Another database's .key, then an older generation's.
        let other = workspace.directory.file("other.db")
        #expect(try await workspace.dbkey("init", other).status == 0)
        let own = try contents(database + ".key")
        try contents(other + ".key").write(to: URL(fileURLWithPath: database + ".key"))
        #expect(try await checks() == ["key-mismatch"])
        try own.write(to: URL(fileURLWithPath: database + ".key"))
        #expect(try await workspace.dbkey("rotate", database).status == 0)
        try own.write(to: URL(fileURLWithPath: database + ".key"))
        #expect(try await checks() == ["key-mismatch"])
    }

    @Test("doctor: a pending change, rotation due, an unreachable and a broken slot; nothing written")
    func doctorLibrary() async throws {
        let database = try await KeySlotTests.SlottedDatabase()
        let manager = database.manager()
        #expect(await manager.doctor().isHealthy)
        database.backup.failNext(2, [.health])
        #expect(await manager.doctor().findings.map(\.check) == ["slot-unreachable"])
        #expect(await manager.doctor().findings.first?.message.contains("Key slot 1") == true)
        database.backup.failNext(1, [.decrypt], with: DBKeyError(.ciphertextInvalid, "altered"))
        #expect(await manager.doctor().findings.map(\.check) == ["slot-broken"])
        let failing = DatabaseKeyManager(
            databasePath: database.path, providers: KmsRegistry(providers: [database.primary, database.backup]),
            configuration: .init(kekId: "primary-kek", kekProvider: "mock", rotationPeriodDays: 1),
            logger: silentLogger, faultInjector: InjectedFault(step: .writingFinalKeyFile).injector)
        await expectError(.io) { try await failing.rotateKey() }
        let before = try contents(database.path + ".key")
        let pending = await manager.doctor().findings.map(\.check)
        #expect(pending == ["pending-change"])
        #expect(try contents(database.path + ".key") == before, "doctor wrote the .key")
        try await manager.open().close()
        #expect(await manager.doctor().isHealthy)

        let directory = try TemporaryDirectory()
        let periodic = DatabaseKeyManager(
            databasePath: directory.file("periodic.db"), kms: MockKms(seed: 5),
            configuration: .init(kekId: "k", rotationPeriodDays: 30), logger: silentLogger)
        try await periodic.initialize()
        #expect(await periodic.doctor(now: Date().addingTimeInterval(29 * 86_400)).isHealthy)
        #expect(
            await periodic.doctor(now: Date().addingTimeInterval(31 * 86_400)).findings.map(\.check) == ["rotation-due"]
        )
    }
}

extension SlotCommandTests {
    @Test("two rewraps of one .key at once (the primary and slot 1): each that reports success is in the final .key")
    func concurrentRewraps() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        let second = try DBKeyCLITests.masterKeyFile(workspace, "second.key")
        let third = try DBKeyCLITests.masterKeyFile(workspace, "third.key")
        let thirdId = LocalKms.kekId(for: third.key)
        let keys = [LocalKms.otherMasterKeyFilesVariable: second.path + ":" + third.path]
        var bothWon = 0
        for round in 0..<8 {
            try? FileManager.default.removeItem(atPath: database)
            try? FileManager.default.removeItem(atPath: database + ".key")
            #expect(try await workspace.dbkey(["init", database, "--slot-kek", "local://" + second.path]).status == 0)
            async let primary = workspace.dbkey(
                ["rewrap", database, "--to", "local://" + third.path, "--wait", "30"], environment: keys)
            async let slot = workspace.dbkey(
                ["rewrap", database, "--slot", "1", "--to", "local://" + third.path, "--wait", "30"],
                environment: keys)
            let (first, other) = try await (primary, slot)
            let keyFile = try KeyFile.read(from: database + ".key")
            #expect(first.status == 0 || first.status == 30, "round \(round): \(first.stderr)")
            #expect(other.status == 0 || other.status == 30, "round \(round): \(other.stderr)")
            if first.status == 0 { #expect(keyFile.kekId == thirdId, "round \(round): the primary's rewrap was lost") }
            if other.status == 0 {
                #expect(keyFile.slots.first?.kekId == thirdId, "round \(round): slot 1's rewrap was lost")
            }
            if first.status == 0 && other.status == 0 { bothWon += 1 }
            let read = try await workspace.dbkey(
                ["sql", database, "SELECT count(*) FROM sqlite_master"], environment: keys)
            #expect(read.status == 0, "\(read.stderr)")
        }
        // With --wait, the second waits its turn rather than losing.
        #expect(bothWon == 8)
    }
}
