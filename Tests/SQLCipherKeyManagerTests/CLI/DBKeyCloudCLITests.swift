import Foundation
import Testing

@testable import SQLCipherKeyManager

/// `dbkey` with a KEK in Cloud KMS or Key Vault (the fakes), at trace level: the whole life of a
/// database, and no credential in any output.
@Suite("dbkey with Cloud KMS and Key Vault", .tags(.cli, .gcp, .azure))
struct DBKeyCloudCLITests {
    /// One provider's KEK URI, environment and the secrets that must never be printed.
    struct Cloud: Sendable, CustomTestStringConvertible {
        let name: String
        let makeKek: @Sendable () async throws -> String
        let environment: @Sendable () throws -> [String: String]
        let secrets: @Sendable () async throws -> [String]

        var testDescription: String { name }
    }

    static let clouds = [
        Cloud(
            name: "gcp",
            makeKek: { "gcp-kms://" + (try await FakeCloudKms.createKey()) },
            environment: { try FakeCloudKms.processEnvironment() },
            secrets: {
                // Lines of the service account's private key, and every token the fake issued.
                let keyFile = try FakeCloudKms.serviceAccountFile()
                let document = try #require(
                    try JSONSerialization.jsonObject(with: contents(keyFile)) as? [String: Any])
                let pem = try #require(document["private_key"] as? String)
                let lines = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.map(String.init)
                return lines + (try await FakeCloudKms.issuedTokens())
            }),
        Cloud(
            name: "azure",
            makeKek: { "azure-kv://" + (try FakeKeyVault.kekId(try await FakeKeyVault.createKey().name)) },
            environment: { try FakeKeyVault.processEnvironment() },
            secrets: { [try FakeKeyVault.value("CLIENT_SECRET")] + (try await FakeKeyVault.issuedTokens()) }),
    ]

    @Test(
        "init → sql → rotate → rewrap to local → rewrap back → sql, at trace level, with no secret in any output",
        arguments: clouds)
    func lifecycle(cloud: Cloud) async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let environment = try cloud.environment()
        let kek = try await cloud.makeKek()
        var outputs: [ProcessResult] = []
        @discardableResult
        func dbkey(_ arguments: String...) async throws -> ProcessResult {
            // At trace level; the workspace checks its own secrets (the client secret among them).
            let result = try await workspace.dbkey(arguments, environment: environment)
            outputs.append(result)
            #expect(result.status == 0, "dbkey \(arguments.joined(separator: " ")): \(result.stderr)")
            return result
        }
        try await dbkey("init", workspace.database, "--kek", kek, "--context", "app=cli")
        try await dbkey("sql", workspace.database, "CREATE TABLE t(a); INSERT INTO t VALUES ('kept')")
        try await dbkey("rotate", workspace.database)
        let status = try await dbkey("status", workspace.database, "--json")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect(report["kms"] as? String == cloud.name)
        #expect(report["dek_version"] as? Int == 2)
        try await dbkey("rewrap", workspace.database, "--to", "local://default")
        #expect(try KeyFile.read(from: workspace.database + ".key").kms == "local")
        try await dbkey("rewrap", workspace.database, "--to", kek)
        let keyFile = try KeyFile.read(from: workspace.database + ".key")
        #expect(keyFile.kms == cloud.name && keyFile.version == 2)
        #expect(try await dbkey("sql", workspace.database, "SELECT a FROM t").stdout == "kept\n")
        #expect(try await dbkey("verify", workspace.database).status == 0)

        #expect(outputs.contains { $0.stderr.contains("key.loaded") }, "trace logging should be on")
        let secrets = try await cloud.secrets()
        #expect(secrets.count >= 2)
        for output in outputs {
            for secret in secrets where secret.count >= 16 {
                #expect(!output.stdout.contains(secret) && !output.stderr.contains(secret), "a secret in the output")
            }
        }
    }
}
