import Foundation
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerGCP
import Testing

@testable import SQLCipherKeyManager

/// `rewrap --all`, `rotate --all` and `doctor --all` over a tree of databases.
@Suite("Many databases", .serialized, .tags(.core))
struct FleetTests {
    typealias Workspace = DBKeyCLITests.Workspace

    /// `count` small databases under `root`, a few to a folder, under the workspace's master key.
    static func makeFleet(_ root: String, count: Int) async throws -> [String] {
        let kms = try localKms()
        let paths = (0..<count).map { root + "/tenant-\($0 / 20)/user-\($0).db" }
        // Four at a time: a thousand take seconds, not a minute.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for index in stride(from: worker, to: count, by: 4) {
                        try FileManager.default.createDirectory(
                            atPath: (paths[index] as NSString).deletingLastPathComponent,
                            withIntermediateDirectories: true)
                        let manager = DatabaseKeyManager(databasePath: paths[index], kms: kms, logger: silentLogger)
                        try await manager.initialize()
                        let db = try await manager.open()
                        try db.execute("CREATE TABLE note(n INTEGER); INSERT INTO note VALUES (\(index))")
                        db.close()
                    }
                }
            }
            try await group.waitForAll()
        }
        return paths
    }

    static func summary(_ result: ProcessResult) throws -> (summary: [String: Int], databases: [[String: String]]) {
        let object = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
        return (
            try #require(object["summary"] as? [String: Int]), try #require(object["databases"] as? [[String: String]])
        )
    }

    /// Whether every database opens with `kms` and holds its own row.
    static func expectOpening(_ paths: [String], kms: any KeyManagementService) async throws {
        for (index, path) in paths.enumerated() {
            let db = try await DatabaseKeyManager(
                databasePath: path, kms: kms, configuration: .init(keyCacheTTL: .zero), logger: silentLogger
            ).open()
            #expect(try db.fetchAll("SELECT n FROM note").first?[0] == .integer(Int64(index)), "\(path)")
            db.close()
        }
    }

    @Test(
        "rewrap --all: a fleet, some in use, a broken .key, a link out of the tree; local → local, a run killed half-way and run again, then local → AWS"
    )
    func rewrapAll() async throws {
        // Enough databases for five tenant folders and a run killed half-way with several jobs at
        // work; 200 in a soak.
        let count = TestScale.choose(100, soak: 200)
        let workspace = try Workspace()
        let root = workspace.directory.file("tenants")
        let paths = try await Self.makeFleet(root, count: count)
        // A broken .key, and a link to a database outside the tree.
        let broken = root + "/tenant-3/broken.db"
        #expect(FileManager.default.createFile(atPath: broken, contents: Data()))
        #expect(
            FileManager.default.createFile(
                atPath: broken + ".key", contents: Data("{".utf8), attributes: [.posixPermissions: 0o600]))
        let outside = workspace.directory.file("outside")
        let outsidePaths = try await Self.makeFleet(outside, count: 1)
        try FileManager.default.createSymbolicLink(atPath: root + "/tenant-4/elsewhere", withDestinationPath: outside)
        let outsideKey = try contents(outsidePaths[0] + ".key")
        // Databases held open by an app: rewrap does not disturb them, so they are rewrapped.
        var held: [DatabaseConnection] = []
        for path in paths.prefix(5) {
            held.append(
                try await DatabaseKeyManager(databasePath: path, kms: try localKms(), logger: silentLogger).open())
        }
        defer { held.forEach { $0.close() } }

        // A dry run changes nothing.
        let firstKey = try contents(paths[0] + ".key")
        let second = try DBKeyCLITests.masterKeyFile(workspace, "second.key")
        let dry = try await workspace.dbkey(
            "rewrap", "--all", root, "--to", "local://" + second.path, "--dry-run", "--json")
        #expect(try Self.summary(dry).summary["would-change"] == count)
        #expect(try contents(paths[0] + ".key") == firstKey)

        // A run killed half-way, then run again: what the first did is left alone.
        let environment = workspace.environment
        let process = Process()
        process.executableURL = URL(fileURLWithPath: DBKeyCLITests.executable)
        // At most 100 KMS requests a second (four a database): 25 databases a second, time to
        // kill it half-way whatever the load.
        process.arguments = [
            "rewrap", "--all", root, "--to", "local://" + second.path, "--jobs", "2", "--max-kms-rps", "100",
        ]
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Kill once about half the databases are rewrapped.
        let secondKekId = LocalKms.kekId(for: second.key)
        var rewrappedBefore = 0
        while process.isRunning && rewrappedBefore < count / 2 {
            try await Task.sleep(for: .milliseconds(20))
            rewrappedBefore = paths.filter { (try? KeyFile.read(from: $0 + ".key").kekId) == secondKekId }.count
        }
        kill(process.processIdentifier, SIGKILL)
        try await offPool { process.waitUntilExit() }
        rewrappedBefore = paths.filter { (try? KeyFile.read(from: $0 + ".key").kekId) == secondKekId }.count
        #expect(process.terminationReason == .uncaughtSignal && rewrappedBefore > 0 && rewrappedBefore < count)
        let rerun = try await workspace.dbkey(
            "rewrap", "--all", root, "--to", "local://" + second.path, "--jobs", "8", "--json")
        #expect(rerun.status == 1, "the broken .key fails the run")
        let (summary, databases) = try Self.summary(rerun)
        #expect(summary["done"] == count - rewrappedBefore && summary["unchanged"] == rewrappedBefore, "\(summary)")
        #expect(summary["failed"] == 1 && summary["refused"] == 1)
        #expect(databases.first { $0["status"] == "failed" }?["database"] == broken)
        #expect(try contents(outsidePaths[0] + ".key") == outsideKey, "the link out of the tree was followed")
        print(
            "fleet test: a rewrap --all killed after \(rewrappedBefore) of \(count); the second run rewrapped the other \(count - rewrappedBefore) and left those alone"
        )
        try await Self.expectOpening(paths, kms: try LocalKms(masterKey: second.key))

        // local → AWS (moto), at most 100 KMS requests a second.
        let toAws = try await workspace.dbkey(
            [
                "rewrap", "--all", root, "--to", "aws-kms://" + (try Moto.keyArn()), "--jobs", "8", "--max-kms-rps",
                "100", "--json",
            ],
            environment: try Moto.processEnvironment().merging([LocalKms.masterKeyFileVariable: second.path]) { $1 })
        #expect(try Self.summary(toAws).summary["done"] == count, "\(toAws.stderr)")
        try await Self.expectOpening(paths, kms: try Moto.provider())
    }

    @Test(
        "rotate --all --if-due skips databases in use and reports them, and takes no master key file for a database; doctor --all names the broken one"
    )
    func rotateAndDoctorAll() async throws {
        let workspace = try Workspace()
        let root = workspace.directory.file("tenants")
        let paths = try await Self.makeFleet(root, count: 10)
        var held: [DatabaseConnection] = []
        for path in paths.prefix(3) {
            held.append(
                try await DatabaseKeyManager(databasePath: path, kms: try localKms(), logger: silentLogger).open())
        }
        // A master key kept beside the databases is no database's .key; an empty .key is.
        _ = try DBKeyCLITests.masterKeyFile(workspace, "tenants/tenant-0/master.key")
        #expect(DatabaseFleet.isOtherKeyFile(root + "/tenant-0/master.key"))
        #expect(!DatabaseFleet.isOtherKeyFile(paths[0] + ".key"))
        #expect(FileManager.default.createFile(atPath: root + "/empty.db.key", contents: Data()))
        #expect(!DatabaseFleet.isOtherKeyFile(root + "/empty.db.key"))
        try FileManager.default.removeItem(atPath: root + "/empty.db.key")
        #expect(try DatabaseFleet.discover(under: root).databases == paths.sorted())
        let rotated = try await workspace.dbkey("rotate", "--all", root, "--json")
        #expect(rotated.status == 0, "skipped is not failed: \(rotated.stdout)")
        let (summary, databases) = try Self.summary(rotated)
        #expect(summary["done"] == 7 && summary["skipped"] == 3 && databases.count == 10)
        #expect(
            Set(databases.filter { $0["status"] == "skipped" }.compactMap { $0["database"] }) == Set(paths.prefix(3)))
        held.forEach { $0.close() }
        // --if-due: none is due (no rotation period).
        let due = try await workspace.dbkey("rotate", "--all", root, "--if-due", "--json")
        #expect(try Self.summary(due).summary["unchanged"] == 10)
        try await Self.expectOpening(paths, kms: try localKms())

        let doctor = try await workspace.dbkey("doctor", "--all", root, "--json")
        let healthy = try Self.summary(doctor).summary["unchanged"]
        #expect(doctor.status == 0 && healthy == 10)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: paths[4])
        let unwell = try await workspace.dbkey("doctor", "--all", root, "--json")
        #expect(unwell.status == 1)
        #expect(try Self.summary(unwell).databases.first { $0["status"] == "failed" }?["detail"] == "file-mode")
    }
}

/// A fleet run against a KMS that throttles: its own suite, so that it runs beside the others.
@Suite("Many databases under a KMS quota", .tags(.gcp))
struct ThrottledFleetTests {
    typealias Workspace = DBKeyCLITests.Workspace

    @Test(
        "rewrap --all of 1,000 databases to a Cloud KMS that throttles past 200 requests a second: every database done, two requests each and one health check, every throttling answer counted",
        .tags(.gcp))
    func throttledFleet() async throws {
        let count = 1_000
        let workspace = try Workspace()
        let root = workspace.directory.file("tenants")
        let paths = try await FleetTests.makeFleet(root, count: count)
        let kekId = try await FakeCloudKms.createKey()
        // The limit counts only this key's requests, so no other test is throttled. With no
        // burst, two requests within 5 ms are one too many: 16 jobs at once are throttled on any
        // machine, however slow.
        try await FakeCloudKms.rateLimit(200, burst: 1, path: kekId)
        let run = try await workspace.dbkey(
            ["rewrap", "--all", root, "--to", "gcp-kms://" + kekId, "--jobs", "16", "--json"],
            environment: try FakeCloudKms.processEnvironment())
        let fake = try await FakeCloudKms.rateLimitCounts()
        try await FakeCloudKms.rateLimit(nil)
        #expect(run.status == 0, "\(run.stderr.suffix(2000))")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any])
        let summary = try #require(object["summary"] as? [String: Int])
        #expect(summary["done"] == count && summary["failed"] == 0, "\(summary)")
        // Per database: the local unwrap, Cloud KMS's encrypt and the decrypt that proves it; the
        // target's health once for the run.
        #expect(fake.admitted == 2 * count + 1, "Cloud KMS served \(fake.admitted) requests")
        #expect(summary["kms_requests"] == 3 * count + 1)
        #expect(fake.throttled > 0 && summary["kms_throttled"] == fake.throttled, "\(summary), fake: \(fake)")
        let lowest = try #require(object["lowest_kms_rate"] as? Double)
        #expect(lowest >= 1 && lowest < 200, "\(lowest)")
        let seconds = try #require(object["seconds"] as? Double)
        print(
            "fleet test: rewrap --all of \(count) databases to Cloud KMS limited to 200 requests a second: \(summary["kms_requests"] ?? 0) KMS requests (\(fake.admitted) to Cloud KMS), \(fake.throttled) throttled, slowed to \(lowest) a second, \(seconds) s"
        )
        for path in paths {
            let keyFile = try KeyFile.read(from: path + ".key")
            #expect(keyFile.kms == "gcp" && keyFile.kekId == kekId, "\(path)")
        }
        let sample = stride(from: 0, to: count, by: 50).map { paths[$0] }
        for path in sample {
            let db = try await DatabaseKeyManager(
                databasePath: path, kms: try FakeCloudKms.provider(), configuration: .init(keyCacheTTL: .zero),
                logger: silentLogger
            ).open()
            #expect(try db.fetchAll("SELECT n FROM note").first?[0] == .integer(Int64(paths.firstIndex(of: path)!)))
            db.close()
        }
    }
}

extension DBKeyCLITests {
    /// A new master key file in the workspace, base64, mode 0600.
    static func masterKeyFile(_ workspace: Workspace, _ name: String) throws -> (path: String, key: SecureBuffer) {
        let key = try SecureBuffer.random(count: 32)
        let path = workspace.directory.file(name)
        let text = key.withUnsafeBytes { Data($0).base64EncodedString() }
        #expect(
            FileManager.default.createFile(
                atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]))
        return (path, key)
    }
}
