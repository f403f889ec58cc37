import BenchmarkSupport
import Foundation
import Logging
import SQLCipherKeyManager

/// `dbkey rewrap --all` over many small databases: local → local and local → AWS KMS (moto),
/// with `--jobs 1` and `--jobs 8`, reporting wall time and KMS requests per database; then
/// local → AWS KMS behind a quota (moto's throttling front, Scripts/fakes/aws_throttle.py),
/// against the quota.
enum FleetBenchmark {
    static func run(workdir relativeWorkdir: String, count: Int, dbkey: String) async throws -> [BenchmarkRow] {
        // KEK URIs name master key files by absolute path.
        let workdir = URL(fileURLWithPath: relativeWorkdir).standardizedFileURL.path
        let root = workdir + "/fleet"
        try? FileManager.default.removeItem(atPath: workdir)
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let first = try masterKey(workdir + "/first.key")
        _ = try masterKey(workdir + "/second.key")
        let kms = try LocalKms(masterKey: first)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for index in stride(from: worker, to: count, by: 4) {
                        let folder = root + "/tenant-\(index / 100)"
                        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
                        let manager = DatabaseKeyManager(
                            databasePath: folder + "/user-\(index).db", kms: kms, logger: logger)
                        try await manager.initialize()
                    }
                }
            }
            try await group.waitForAll()
        }
        let environment = ProcessInfo.processInfo.environment
        var base = ["PATH": environment["PATH"] ?? "/usr/bin:/bin", "HOME": workdir]
        let aws: [String: String]? = environment["DBKEY_TEST_AWS_ENDPOINT"].map { endpoint in
            [
                "AWS_ACCESS_KEY_ID": environment["DBKEY_TEST_AWS_ACCESS_KEY_ID"] ?? "",
                "AWS_SECRET_ACCESS_KEY": environment["DBKEY_TEST_AWS_SECRET_ACCESS_KEY"] ?? "",
                "AWS_REGION": environment["DBKEY_TEST_AWS_REGION"] ?? "us-east-1",
                "AWS_ENDPOINT_URL_KMS": endpoint,
            ]
        }
        base.merge(aws ?? [:]) { $1 }
        func rewrapAll(to uri: String, jobs: Int, master: String) throws -> (
            seconds: Double, requests: Int, done: Int, throttled: Int
        ) {
            var run = base
            run[LocalKms.masterKeyFileVariable] = master
            let output = try runProcess(
                dbkey, ["rewrap", "--all", root, "--to", uri, "--jobs", String(jobs), "--json"], environment: run,
                requireSuccess: false)
            let object = try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any]
            if let error = object?["error"] {
                FileHandle.standardError.write(Data("fleet: dbkey failed: \(error)\n".utf8))
            }
            let summary = object?["summary"] as? [String: Int] ?? [:]
            let failed = (object?["databases"] as? [[String: String]] ?? []).filter { $0["status"] == "failed" }
            if let first = failed.first {
                FileHandle.standardError.write(
                    Data("fleet: \(failed.count) failed, e.g. \(first["detail"] ?? "")\n".utf8))
            }
            return (
                object?["seconds"] as? Double ?? 0, summary["kms_requests"] ?? 0, summary["done"] ?? 0,
                summary["kms_throttled"] ?? 0
            )
        }
        func row(_ what: String, _ run: (seconds: Double, requests: Int, done: Int, throttled: Int), against: Double?)
            -> BenchmarkRow
        {
            let perDatabase = run.seconds / Double(max(run.done, 1))
            return BenchmarkRow(
                measurement: "fleet rewrap \(what), \(run.done) databases",
                ours: String(
                    format: "%.2f ms and %.1f KMS requests a database", perDatabase * 1000,
                    Double(run.requests) / Double(max(run.done, 1))),
                baseline: against.map { String(format: "%.2f ms with --jobs 1", $0 * 1000) } ?? "—",
                ratio: against.map { String(format: "%.2f× faster", $0 / perDatabase) } ?? "—",
                target: "every database done", met: run.done == count)
        }
        let (firstPath, secondPath) = (workdir + "/first.key", workdir + "/second.key")
        var rows: [BenchmarkRow] = []
        let localOne = try rewrapAll(to: "local://" + secondPath, jobs: 1, master: firstPath)
        rows.append(row("local → local, --jobs 1", localOne, against: nil))
        let localEight = try rewrapAll(to: "local://" + firstPath, jobs: 8, master: secondPath)
        rows.append(
            row("local → local, --jobs 8", localEight, against: localOne.seconds / Double(max(localOne.done, 1))))
        guard aws != nil, let keyArn = environment["DBKEY_TEST_AWS_KEY_ARN"] else {
            rows.append(
                .init(
                    measurement: "fleet rewrap local → AWS", ours: "not run", baseline: "no moto server", ratio: "—",
                    target: "—", met: nil))
            return rows
        }
        let awsOne = try rewrapAll(to: "aws-kms://" + keyArn, jobs: 1, master: firstPath)
        rows.append(row("local → AWS KMS (moto), --jobs 1", awsOne, against: nil))
        _ = try rewrapAll(to: "local://" + firstPath, jobs: 8, master: firstPath)
        let awsEight = try rewrapAll(to: "aws-kms://" + keyArn, jobs: 8, master: firstPath)
        rows.append(
            row("local → AWS KMS (moto), --jobs 8", awsEight, against: awsOne.seconds / Double(max(awsOne.done, 1))))
        guard let front = environment["DBKEY_TEST_AWS_THROTTLING_ENDPOINT"],
            let token = environment["DBKEY_TEST_AWS_THROTTLING_ADMIN_TOKEN"]
        else { return rows }
        // The front passes requests on to moto: first unhindered, to measure what --jobs 8 sends
        // through it; then under a quota of two thirds of that, with a burst of a tenth of a
        // second, as AWS KMS shares one among an account's requests.
        func admin(_ command: String, _ body: String) throws {
            _ = try runProcess(
                "/usr/bin/env", ["python3", "Scripts/fakes/admin.py", front, token, command, body], environment: base)
        }
        var throughFront = base
        throughFront["AWS_ENDPOINT_URL_KMS"] = front
        base = throughFront
        _ = try rewrapAll(to: "local://" + firstPath, jobs: 8, master: firstPath)
        let unhindered = try rewrapAll(to: "aws-kms://" + keyArn, jobs: 8, master: firstPath)
        let unhinderedRate = Double(unhindered.done * 2 + 1) / max(unhindered.seconds, 0.001)
        let quota = max(10, (unhinderedRate * 2 / 3).rounded())
        try admin("ratelimit", #"{"rate": \#(quota), "burst": \#(max(1, Int(quota / 10))), "path": "TrentService."}"#)
        _ = try rewrapAll(to: "local://" + firstPath, jobs: 8, master: firstPath)
        let quotaRun = try rewrapAll(to: "aws-kms://" + keyArn, jobs: 8, master: firstPath)
        try admin("ratelimit", "{}")
        // Two requests to AWS a database (the wrap and the unwrap that proves it), the health once.
        let sent = Double(quotaRun.done * 2 + 1) / max(quotaRun.seconds, 0.001)
        rows.append(
            BenchmarkRow(
                measurement:
                    "fleet rewrap local → AWS KMS (moto behind a throttling front) under a quota of \(Int(quota)) requests a second (2/3 of the \(Int(unhinderedRate.rounded())) it passed unhindered), --jobs 8, \(quotaRun.done) databases",
                ours: String(
                    format: "%.0f AWS requests a second, %.1f KMS requests a database, %d throttled (each retried)",
                    sent, Double(quotaRun.requests) / Double(max(quotaRun.done, 1)), quotaRun.throttled),
                baseline: "the quota",
                ratio: String(format: "%.2f of the quota", sent / quota),
                target: "every database done, at least 0.70 of the quota",
                met: quotaRun.done == count && sent / quota >= 0.7))
        return rows
    }

    /// A new master key file (base64, 0600), and its bytes.
    private static func masterKey(_ path: String) throws -> SecureBuffer {
        let key = try SecureBuffer.random(count: 32)
        let text = key.withUnsafeBytes { Data($0).base64EncodedString() }
        guard
            FileManager.default.createFile(
                atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
        else { throw DBKeyError(.io, "cannot write \(path)") }
        return key
    }
}
