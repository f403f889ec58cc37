import Foundation
import Testing

@testable import SQLCipherKeyManager
import SQLCipherKeyManagerAWS
import SQLCipherKeyManagerAzure
import SQLCipherKeyManagerGCP
import SQLCipherKeyManagerPKCS11
import SQLCipherKeyManagerTPM
import SQLCipherKeyManagerVault

/// `dbkey` end to end: the built binary, run as an operator would, with the master key in a
/// file named by the environment.
@Suite("dbkey command line", .tags(.cli))
struct DBKeyCLITests {
    /// The `dbkey` binary built beside this test bundle.
    static let executable: String = {
        let bundleDirectory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
            .deletingLastPathComponent()
        return bundleDirectory.appendingPathComponent("dbkey").path
    }()

    /// A scratch directory with a master key file and an environment pointing at it.
    struct Workspace {
        let directory: TemporaryDirectory
        let environment: [String: String]
        let masterKeyBase64: String

        init(masterKeyBase64: String = testMasterKeyBase64) throws {
            directory = try TemporaryDirectory()
            self.masterKeyBase64 = masterKeyBase64
            let keyPath = directory.file("master.key")
            _ = FileManager.default.createFile(
                atPath: keyPath, contents: Data((masterKeyBase64 + "\n").utf8), attributes: [.posixPermissions: 0o600])
            environment = [
                "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable: allowSQLCipher3Databases,
                "HOME": directory.path,
                LocalKms.masterKeyFileVariable: keyPath,
            ]
        }

        var database: String { directory.file("app.db") }

        @discardableResult
        func dbkey(_ arguments: String..., environment extra: [String: String] = [:]) async throws -> ProcessResult {
            try await dbkey(arguments, environment: extra)
        }
    }

    @Test("init → sql (create, insert, select) → status → verify")
    func happyPath() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        let created = try await workspace.dbkey(
            "init", database, "--context", "purpose=cli-test", "--rotation-days", "30")
        #expect(created.status == 0, "\(created.stderr)")
        #expect(created.stdout.contains("version 1"))

        let sql = try await workspace.dbkey(
            "sql", database,
            "CREATE TABLE note(id INTEGER PRIMARY KEY, body TEXT, data BLOB); INSERT INTO note(body, data) VALUES ('tab\there', x'00ff'), (NULL, NULL); SELECT id, body, data FROM note ORDER BY id"
        )
        #expect(sql.status == 0, "\(sql.stderr)")
        #expect(sql.stdout == "1\ttab\\there\tx'00ff'\n2\t\t\n")

        let json = try await workspace.dbkey("sql", database, "--json", "SELECT id, body FROM note WHERE id = 1")
        let results = try #require(
            try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        #expect(results.count == 1 && results[0]["columns"] as? [String] == ["id", "body"])
        let rows = try #require(results[0]["rows"] as? [[Any]])
        #expect(rows.count == 1 && rows[0][0] as? Int == 1 && rows[0][1] as? String == "tab\there")

        // Duplicate column names are kept; two statements' rows are two results, never merged.
        let twice = try await workspace.dbkey("sql", database, "--json", "SELECT 1 AS a, 2 AS a; SELECT 3 AS a")
        let both = try #require(try JSONSerialization.jsonObject(with: Data(twice.stdout.utf8)) as? [[String: Any]])
        #expect(both.count == 2)
        #expect(both.first?["columns"] as? [String] == ["a", "a"])
        #expect((both.first?["rows"] as? [[Int]]) == [[1, 2]] && (both.last?["rows"] as? [[Int]]) == [[3]])
        let headers = try await workspace.dbkey("sql", database, "--header", "SELECT 1 AS a; SELECT 2 AS a")
        #expect(headers.stdout == "a\n1\na\n2\n", "a header for each statement")

        let status = try await workspace.dbkey("status", database, "--json")
        #expect(status.status == 0, "\(status.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect(report["kms"] as? String == "local")
        #expect((report["kek_id"] as? String)?.hasPrefix("local:") == true)
        #expect(report["dek_version"] as? Int == 1)
        #expect(report["rotation_period_days"] as? Int == 30)
        #expect(report["rotation_due"] as? Bool == false)
        #expect(report["kms_reachable"] as? Bool == true)
        #expect(report["kms_latency_ms"] is Double)
        #expect(report["database_opens"] as? Bool == true)
        #expect(report["rotated_at"] is NSNull)

        let text = try await workspace.dbkey("status", database)
        #expect(text.stdout.contains("opens:        yes"))

        let verify = try await workspace.dbkey("verify", database)
        #expect(verify.status == 0, "\(verify.stderr)")
        #expect(verify.stdout.contains("integrity:    ok"))
        #expect(verify.stdout.contains("key check:    ok"))
    }

    @Test("help lists a distinct exit status for every error code")
    func exitCodesInHelp() async throws {
        let help = try await run(Self.executable, ["--help"])
        #expect(help.status == 0)
        let statuses = ExitStatusTable.entries
        #expect(Set(statuses.map(\.status)).count == statuses.count, "exit statuses must be distinct")
        for (code, status) in statuses {
            #expect(help.stdout.contains("\(status)") && help.stdout.contains(code), "help misses \(code)")
        }
    }

    @Test("help names every registered provider: each of its KEK URI forms and each variable it reads")
    func providersInHelp() async throws {
        let help = try await run(Self.executable, ["--help"])
        #expect(help.status == 0)
        // The providers the dbkey executable registers (Sources/dbkey/main.swift).
        let factories = [
            LocalKms.factory, AWSKms.factory, VaultTransit.factory, Pkcs11Kms.factory, GoogleCloudKms.factory,
            AzureKeyVault.factory, Tpm2Kms.factory,
        ]
        for factory in factories {
            #expect(!factory.help.isEmpty, "\(factory.providerName) says nothing of its configuration")
            for form in factory.uriForms {
                #expect(help.stdout.contains(form), "help misses \(form)")
            }
            let variables = factory.help.split(whereSeparator: {
                !$0.isLetter && !$0.isNumber && $0 != "_" && $0 != "$"
            })
            .filter { $0.hasPrefix("$") }
            for variable in variables {
                #expect(help.stdout.contains(variable), "help misses \(variable) of \(factory.providerName)")
            }
        }
    }

    @Test("each failure gets its own exit status and a message on stderr", arguments: CLIFailure.allCases)
    func failures(failure: CLIFailure) async throws {
        let workspace = try Workspace()
        let other = workspace.directory.file("other.db")
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        #expect(try await workspace.dbkey("init", other).status == 0)
        #expect(
            try await workspace.dbkey(
                "sql", workspace.database,
                "CREATE TABLE t(a); INSERT INTO t SELECT randomblob(500) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 100) SELECT x FROM c)"
            ).status == 0)
        let keyPath = workspace.database + ".key"
        var environment: [String: String] = [:]
        var command = ["verify", workspace.database]
        switch failure {
        case .wrongMasterKey:
            let otherKey = workspace.directory.file("other-master.key")
            _ = FileManager.default.createFile(
                atPath: otherKey, contents: Data(Data(repeating: 9, count: 32).base64EncodedString().utf8),
                attributes: [.posixPermissions: 0o600])
            environment[LocalKms.masterKeyFileVariable] = otherKey
        case .swappedKeyFile:
            try FileManager.default.removeItem(atPath: keyPath)
            try FileManager.default.copyItem(atPath: other + ".key", toPath: keyPath)
        case .damagedFirstPage:
            try corrupt(workspace.database, range: 200..<260)
        case .damagedLaterPage:
            try corrupt(workspace.database, range: (4096 * 5 + 100)..<(4096 * 5 + 160))
        case .insecureKeyFile:
            chmod(keyPath, 0o644)
        case .missingKeyFile:
            try FileManager.default.removeItem(atPath: keyPath)
        case .corruptKeyFile:
            try Data("{\"kek_id\": ".utf8).write(to: URL(fileURLWithPath: keyPath))
        case .symlinkKeyFile:
            try FileManager.default.moveItem(atPath: keyPath, toPath: keyPath + ".real")
            try FileManager.default.createSymbolicLink(atPath: keyPath, withDestinationPath: keyPath + ".real")
        case .alreadyInitialized:
            command = ["init", workspace.database]
        case .badKekURI:
            command = ["init", workspace.directory.file("new.db"), "--kek", "kms://nothing"]
        case .sqlError:
            command = ["sql", workspace.database, "SELEC 1"]
        }
        let keyBefore = try? contents(keyPath)
        let result = try await workspace.dbkey(command, environment: environment)
        #expect(result.status == failure.expectedStatus, "\(failure): \(result.stderr)")
        #expect(result.stderr.contains("dbkey: error: \(failure.expectedMessageFragment)"), "\(result.stderr)")
        #expect((try? contents(keyPath)) == keyBefore, "a failed command changed the .key file")
        #expect(!result.stderr.contains(workspace.masterKeyBase64))
    }

    @Test("init under a file-size limit (as on a full disk) fails with an I/O error and leaves nothing behind")
    func initOnFullDisk() async throws {
        let workspace = try Workspace()
        let database = workspace.directory.file("full.db")
        // ulimit -f 0 makes every write past byte 0 fail with EFBIG; SIGXFSZ is ignored so the
        // write returns an error instead of killing the process.
        let shell = "trap '' XFSZ; ulimit -f 0; exec \"$0\" init \"$1\""
        let result = try await run(
            "/bin/sh", ["-c", shell, Self.executable, database], environment: workspace.environment)
        #expect(result.status == 41, "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: database))
        #expect(!FileManager.default.fileExists(atPath: database + ".key"))
        #expect(
            try FileManager.default.contentsOfDirectory(atPath: workspace.directory.path).sorted() == ["master.key"])
    }

    @Test("a new master key file is created 0600 and announced on stderr when none is configured")
    func masterKeyCreatedLoudly() async throws {
        let workspace = try Workspace()
        var environment = workspace.environment
        environment.removeValue(forKey: LocalKms.masterKeyFileVariable)
        let result = try await run(Self.executable, ["init", workspace.database], environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        let path = workspace.directory.path + "/.config/dbkey/master.key"
        #expect(result.stderr.contains(path) && result.stderr.contains("Back it up"))
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        let key = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .newlines)
        #expect(!result.stderr.contains(key) && !result.stdout.contains(key))
    }

    @Test("at trace level, no key material appears in stdout or stderr")
    func noSecretsAtTrace() async throws {
        let workspace = try Workspace()
        var outputs: [ProcessResult] = []
        outputs.append(
            try await run(
                Self.executable, ["init", workspace.database, "--log-level", "trace"],
                environment: workspace.environment))
        outputs.append(
            try await run(
                Self.executable, ["sql", workspace.database, "--log-level", "trace", "SELECT 1"],
                environment: workspace.environment))
        outputs.append(
            try await run(
                Self.executable, ["status", workspace.database, "--log-level", "trace", "--json"],
                environment: workspace.environment))
        outputs.append(
            try await run(
                Self.executable, ["verify", workspace.database, "--log-level", "trace"],
                environment: workspace.environment))
        #expect(outputs.allSatisfy { $0.status == 0 })
        #expect(outputs.contains { $0.stderr.contains("key.loaded") }, "trace logging should be on")
        let kms = try localKms()
        let keyFile = try KeyFile.read(from: workspace.database + ".key")
        let dek = try await kms.decrypt(keyFile.encryptedDek, kekId: keyFile.kekId, context: keyFile.encryptionContext)
        let secrets = [
            workspace.masterKeyBase64, hex(dek), hex(dek).uppercased(),
            dek.withUnsafeBytes { Data($0).base64EncodedString() },
        ]
        for output in outputs {
            for secret in secrets {
                #expect(!output.stdout.contains(secret) && !output.stderr.contains(secret))
            }
        }
    }

    private func corrupt(_ path: String, range: Range<Int>) throws {
        var bytes = try contents(path)
        for offset in range { bytes[offset] ^= 0xA5 }
        try bytes.write(to: URL(fileURLWithPath: path))
    }
}

extension DBKeyCLITests.Workspace {
    @discardableResult
    /// Runs `dbkey` at trace log level and checks that no secret it could know — the master
    /// key, the database's data key, an AWS secret, a passphrase in the environment — appears
    /// in what it printed.
    func dbkey(_ arguments: [String], environment extra: [String: String] = [:], input: String = "") async throws
        -> ProcessResult
    {
        let environment = environment.merging(extra) { $1 }
        let traced =
            arguments.isEmpty || arguments[0].hasPrefix("-") ? arguments : arguments + ["--log-level", "trace"]
        let result = try await run(DBKeyCLITests.executable, traced, input: input, environment: environment)
        var secrets = [masterKeyBase64]
        secrets += [
            "AWS_SECRET_ACCESS_KEY", "OLD_DB_PASSPHRASE", "P", "VAULT_TOKEN", "DBKEY_PKCS11_PIN", "AZURE_CLIENT_SECRET",
            "GOOGLE_OAUTH_ACCESS_TOKEN", "IDENTITY_HEADER",
        ].compactMap {
            environment[$0]
        }.filter {
            !$0.isEmpty
        }
        if let pinFile = environment[Pkcs11Kms.pinFileVariable],
            let pin = try? String(contentsOfFile: pinFile, encoding: .utf8)
        {
            secrets.append(pin.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        if let keyFile = try? KeyFile.read(from: database + ".key"), keyFile.kms == "local",
            let dek = try? await localKms(masterKeyBase64: masterKeyBase64).decrypt(
                keyFile.encryptedDek, kekId: keyFile.kekId, context: keyFile.encryptionContext)
        {
            secrets += [hex(dek), hex(dek).uppercased(), dek.withUnsafeBytes { Data($0).base64EncodedString() }]
        }
        for secret in secrets {
            #expect(
                !result.stdout.contains(secret) && !result.stderr.contains(secret),
                "a secret was printed by dbkey \(arguments.first ?? "")")
        }
        return result
    }
}

/// The failures the CLI must tell apart, with the status and message each must produce.
enum CLIFailure: String, CaseIterable, Sendable {
    case wrongMasterKey, swappedKeyFile, damagedFirstPage, damagedLaterPage, insecureKeyFile, missingKeyFile
    case corruptKeyFile, symlinkKeyFile, alreadyInitialized, badKekURI, sqlError

    var expectedStatus: Int32 {
        switch self {
        case .wrongMasterKey: 22
        case .swappedKeyFile: 10
        case .damagedFirstPage, .damagedLaterPage: 11
        case .insecureKeyFile, .symlinkKeyFile: 16
        case .missingKeyFile: 14
        case .corruptKeyFile: 15
        case .alreadyInitialized: 13
        case .badKekURI: 42
        case .sqlError: 40
        }
    }

    var expectedMessageFragment: String {
        switch self {
        case .wrongMasterKey: "The data key is wrapped under the local master key"
        case .swappedKeyFile: "Wrong key for this database"
        case .damagedFirstPage: ""
        case .damagedLaterPage: ""
        case .insecureKeyFile: "The key file"
        case .symlinkKeyFile: "The key file"
        case .missingKeyFile: "The key file"
        case .corruptKeyFile: "The key file"
        case .alreadyInitialized: ""
        case .badKekURI: "\"kms://nothing\" is not a KEK URI"
        case .sqlError: "SQLite failed"
        }
    }
}

/// The exit statuses `dbkey --help` must list, written out here rather than read from the
/// executable's table, so that a change to either shows up as a failure.
enum ExitStatusTable {
    static let entries: [(code: String, status: Int32)] = [
        ("wrong-key", 10), ("database-damaged", 11), ("database-not-found", 12), ("already-initialized", 13),
        ("key-file-missing", 14), ("key-file-corrupt", 15), ("key-file-insecure", 16), ("kms-unavailable", 20),
        ("kms-access-denied", 21), ("kms-key-not-found", 22), ("kms-key-disabled", 23), ("ciphertext-invalid", 24),
        ("database-in-use", 30), ("rotation-interrupted", 31), ("unsupported-format", 32), ("sqlite-error", 40),
        ("io-error", 41), ("invalid-configuration", 42),
    ]
}

/// `dbkey rotate`, `rewrap` and `migrate` end to end.
@Suite("dbkey key changes", .tags(.engine, .cli))
struct DBKeyKeyChangeCLITests {
    typealias Workspace = DBKeyCLITests.Workspace

    @Test("rotate bumps the version; --if-due leaves a key that is not due alone")
    func rotate() async throws {
        let workspace = try Workspace()
        #expect(try await workspace.dbkey("init", workspace.database, "--rotation-days", "30").status == 0)
        #expect(
            try await workspace.dbkey("sql", workspace.database, "CREATE TABLE t(a); INSERT INTO t VALUES ('row')")
                .status
                == 0)
        let notDue = try await workspace.dbkey("rotate", workspace.database, "--if-due", "--json")
        #expect(notDue.status == 0)
        #expect(notDue.stdout.contains("\"rotated\" : false"))
        let rotated = try await workspace.dbkey("rotate", workspace.database, "--json")
        #expect(rotated.status == 0, "\(rotated.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(rotated.stdout.utf8)) as? [String: Any])
        #expect(report["dek_version"] as? Int == 2 && report["rotated"] as? Bool == true)
        #expect(!rotated.stderr.contains("rekeying:"), "no progress output when stderr is not a terminal")
        #expect(try await workspace.dbkey("sql", workspace.database, "SELECT a FROM t").stdout == "row\n")
        #expect(try await workspace.dbkey("verify", workspace.database).status == 0)
    }

    @Test("rewrap --to local:///PATH moves the key under another master key without touching the database")
    func rewrap() async throws {
        let workspace = try Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        let databaseBytes = try contents(workspace.database)
        let newMaster = workspace.directory.file("new-master.key")
        _ = FileManager.default.createFile(
            atPath: newMaster, contents: Data(Data(repeating: 5, count: 32).base64EncodedString().utf8),
            attributes: [.posixPermissions: 0o600])
        let result = try await workspace.dbkey("rewrap", workspace.database, "--to", "local://" + newMaster)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try contents(workspace.database) == databaseBytes)
        #expect(
            try await workspace.dbkey("verify", workspace.database).status == 22,
            "the old master key no longer unwraps it")
        #expect(
            try await workspace.dbkey(
                "verify", workspace.database, environment: [LocalKms.masterKeyFileVariable: newMaster]
            )
            .status == 0)
    }

    @Test(
        "migrate takes the passphrase from an environment variable, a file or stdin, never argv",
        ThirdPartyFixture.required(
            "sqlcipher-compat/sqlcipher-2.0-le-testkey.db", from: ThirdPartyFixture.sqlcipherCompat))
    func migratePassphraseSources() async throws {
        let fixture = MigrationTests.compatFixtures + "/sqlcipher-2.0-le-testkey.db"
        try #require(FileManager.default.fileExists(atPath: fixture), "missing ../shared fixtures")
        for source in ["env", "file", "stdin"] {
            let workspace = try Workspace()
            try FileManager.default.copyItem(atPath: fixture, toPath: workspace.database)
            var arguments = ["migrate", workspace.database, "--kdf-iter", "4000"]
            var environment: [String: String] = [:]
            var input = ""
            switch source {
            case "env":
                arguments += ["--from-passphrase-env", "OLD_DB_PASSPHRASE"]
                environment["OLD_DB_PASSPHRASE"] = "testkey"
            case "file":
                let file = workspace.directory.file("passphrase")
                _ = FileManager.default.createFile(
                    atPath: file, contents: Data("testkey\n".utf8), attributes: [.posixPermissions: 0o600])
                arguments += ["--from-passphrase-file", file]
            default:
                arguments += ["--from-passphrase-stdin"]
                input = "testkey\n"
            }
            let result = try await run(
                DBKeyCLITests.executable, arguments, input: input,
                environment: workspace.environment.merging(environment) { $1 })
            #expect(result.status == 0, "\(source): \(result.stderr)")
            #expect(!arguments.contains("testkey"))
            #expect(
                try await workspace.dbkey("sql", workspace.database, "SELECT count(*) FROM t1").stdout == "78536\n",
                "\(source)")
        }
    }

    @Test(
        "migrate adopts the SQLCipher 4 database on SQLCipher 4 (refuses it with exit 32 on 3.x), and refuses a group-readable passphrase file with 16",
        ThirdPartyFixture.required("sqlcipher-compat/sqlcipher-4.0-testkey.db", from: ThirdPartyFixture.sqlcipherCompat)
    )
    func migrateSQLCipher4() async throws {
        let fixture = MigrationTests.compatFixtures + "/sqlcipher-4.0-testkey.db"
        try #require(FileManager.default.fileExists(atPath: fixture), "missing ../shared fixtures")
        let workspace = try Workspace()
        try FileManager.default.copyItem(atPath: fixture, toPath: workspace.database)
        let bytes = try contents(workspace.database)
        let file = workspace.directory.file("passphrase")
        _ = FileManager.default.createFile(
            atPath: file, contents: Data("testkey".utf8), attributes: [.posixPermissions: 0o644])
        #expect(try await workspace.dbkey("migrate", workspace.database, "--from-passphrase-file", file).status == 16)
        #expect(try await workspace.dbkey("migrate", workspace.database).status == 64, "a source is required")
        #expect(
            try await workspace.dbkey(
                "migrate", workspace.database, "--from-passphrase-env", "P", "--sqlcipher-format", "5",
                environment: ["P": "testkey"]
            ).status == 64)
        #expect(try contents(workspace.database) == bytes)

        let result = try await workspace.dbkey(
            "migrate", workspace.database, "--from-passphrase-env", "P", environment: ["P": "testkey"])
        guard try SQLCipherEngine.linked().majorVersion >= 4 else {
            #expect(result.status == 32 && result.stderr.contains("SQLCipher 4"), "\(result.stderr)")
            #expect(try contents(workspace.database) == bytes)
            return
        }
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.isEmpty || !result.stderr.contains("ERROR CORE"), "SQLCipher's own log stays quiet")
        #expect(
            try await workspace.dbkey("sql", workspace.database, "SELECT count(*) FROM t1").stdout == "78536\n")
        let status = try await workspace.dbkey("status", "--json", workspace.database)
        let report = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        #expect(report?["sqlcipher_format"] as? Int == 4 && report?["upgrade_available"] as? Bool == false)
    }
}

/// `dbkey` with a KEK in AWS KMS (moto), configured as the AWS SDKs are.
@Suite("dbkey with AWS KMS", .tags(.cli, .aws))
struct DBKeyAwsCLITests {
    @Test("init --kek aws-kms://alias/…, sql, status with KMS health and latency, rotate, verify")
    func awsLifecycle() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let aws = try Moto.processEnvironment()
        let created = try await workspace.dbkey(
            "init", workspace.database, "--kek", "aws-kms://" + (try Moto.alias()), environment: aws)
        #expect(created.status == 0, "\(created.stderr)")
        #expect(
            try await workspace.dbkey(
                "sql", workspace.database, "CREATE TABLE t(a); INSERT INTO t VALUES (1)", environment: aws
            ).status == 0)
        let status = try await workspace.dbkey("status", workspace.database, "--json", environment: aws)
        #expect(status.status == 0, "\(status.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        #expect(report["kms"] as? String == "aws")
        #expect(report["kek_id"] as? String == (try Moto.keyArn()))
        #expect(report["kms_reachable"] as? Bool == true)
        #expect(report["kms_key_state"] as? String == "Enabled")
        #expect((report["kms_latency_ms"] as? Double).map { $0 > 0 } == true)
        #expect(try await workspace.dbkey("rotate", workspace.database, environment: aws).status == 0)
        #expect(try await workspace.dbkey("verify", workspace.database, environment: aws).status == 0)
        // Without credentials: access denied, with the variables to set.
        let denied = try await workspace.dbkey(
            "verify", workspace.database, environment: ["AWS_ACCESS_KEY_ID": "", "HOME": workspace.directory.path])
        #expect(denied.status == 21, "\(denied.stderr)")
    }

    @Test("rewrap --to aws-kms://ARN moves a database from the local provider to AWS without touching it")
    func localToAws() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let aws = try Moto.processEnvironment()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        #expect(
            try await workspace.dbkey("sql", workspace.database, "CREATE TABLE t(a); INSERT INTO t VALUES ('kept')")
                .status == 0)
        let bytes = try contents(workspace.database)
        let moved = try await workspace.dbkey(
            "rewrap", workspace.database, "--to", "aws-kms://" + (try Moto.keyArn()), environment: aws)
        #expect(moved.status == 0, "\(moved.stderr)")
        #expect(try contents(workspace.database) == bytes)
        #expect(try KeyFile.read(from: workspace.database + ".key").kms == "aws")
        // The local master key is no longer needed: only AWS credentials.
        let environment = aws.merging(["PATH": workspace.environment["PATH"]!, "HOME": workspace.directory.path]) { $1 }
        let read = try await run(
            DBKeyCLITests.executable, ["sql", workspace.database, "SELECT a FROM t"], environment: environment)
        #expect(read.stdout == "kept\n", "\(read.stderr)")
    }
}

/// The process-level protections of `dbkey`.
@Suite("dbkey process hardening", .tags(.cli))
struct DBKeyHardeningTests {
    /// A `dbkey rotate` kept waiting by a connection this test holds open, so that it stays alive
    /// however slowly the test is scheduled, until it is terminated or signalled.
    struct WaitingDbkey {
        let process = Process()
        let stderr = Pipe()
        let connection: DatabaseConnection
        /// Kept for the process's lifetime: its directory goes when it is released.
        let workspace: DBKeyCLITests.Workspace

        init(_ workspace: DBKeyCLITests.Workspace) async throws {
            self.workspace = workspace
            #expect(try await workspace.dbkey("init", workspace.database).status == 0)
            let holder = DatabaseKeyManager(
                databasePath: workspace.database, kms: try localKms(masterKeyBase64: workspace.masterKeyBase64),
                logger: silentLogger)
            connection = try await holder.open()
            process.executableURL = URL(fileURLWithPath: DBKeyCLITests.executable)
            process.arguments = ["rotate", workspace.database, "--wait", "120"]
            process.environment = workspace.environment
            process.standardError = stderr
            process.standardOutput = FileHandle.nullDevice
            try process.run()
        }

        /// Waits up to a minute (a debug build starts slowly under the whole suite) for the line
        /// of /proc/PID/limits that shows the core file size limit at 0, soft and hard: dbkey
        /// sets it right after installing its crash handlers. Not `Process.isRunning`: right after
        /// run() it can read false on a loaded machine; a process that is gone has no /proc entry.
        func hardenedLimitLine() async throws -> Substring? {
            let pid = process.processIdentifier
            for attempt in 0..<6000 {
                if attempt > 200 && !FileManager.default.fileExists(atPath: "/proc/\(pid)") { return nil }
                try await Task.sleep(for: .milliseconds(10))
                let limits = (try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? ""
                // The shell's own limit is replaced once dbkey has started.
                if let line = limits.split(separator: "\n").first(where: { $0.hasPrefix("Max core file size") }),
                    line.split(separator: " ").dropFirst(4).prefix(2) == ["0", "0"]
                {
                    return line
                }
            }
            return nil
        }

        func stop() {
            process.terminate()
            connection.close()
        }
    }

    @Test("a running dbkey has a core file size limit of 0, soft and hard")
    func coreDumpsOff() async throws {
        let dbkey = try await WaitingDbkey(try DBKeyCLITests.Workspace())
        defer { dbkey.stop() }
        if try await dbkey.hardenedLimitLine() == nil {
            dbkey.process.terminate()
            let stderr = String(decoding: dbkey.stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            Issue.record("dbkey never lowered its core file size limit to 0; its stderr: \(stderr)")
        }
    }

    @Test(
        "a crash prints one fixed line and no registers or memory, and exits 128 + the signal",
        arguments: [SIGSEGV, SIGBUS, SIGABRT])
    func quietCrash(signal: Int32) async throws {
        let dbkey = try await WaitingDbkey(try DBKeyCLITests.Workspace())
        defer { dbkey.stop() }
        #expect(try await dbkey.hardenedLimitLine() != nil)
        kill(dbkey.process.processIdentifier, signal)
        let process = dbkey.process
        let stderr = dbkey.stderr
        let output = try await offPool { () -> String in
            let data = stderr.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return String(decoding: data, as: UTF8.self)
        }
        #expect(process.terminationReason == .exit && process.terminationStatus == 128 + signal)
        #expect(
            output == "dbkey: crashed; no memory contents are printed. Report it with the command that was run.\n",
            "\(output)")
    }

    @Test(
        "init, sql, rotate and a new master key create nothing wider than 0600 (0700 for directories), whatever the umask"
    )
    func permissions() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        var environment = workspace.environment
        environment.removeValue(forKey: LocalKms.masterKeyFileVariable)
        let database = workspace.database
        // umask 000: anything wider than 0600 would show.
        let script =
            "umask 000; \"$0\" init \"$1\" && \"$0\" sql \"$1\" 'CREATE TABLE t(a); INSERT INTO t VALUES (1)' && \"$0\" rotate \"$1\""
        let result = try await run(
            "/bin/sh", ["-c", script, DBKeyCLITests.executable, database], environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        let root = URL(fileURLWithPath: workspace.directory.path)
        let items = try #require(FileManager.default.enumerator(atPath: root.path)).compactMap { $0 as? String }
        #expect(items.contains("app.db") && items.contains("app.db.key") && items.contains(".config/dbkey/master.key"))
        for item in items where item != "master.key" {
            let attributes = try FileManager.default.attributesOfItem(atPath: root.appendingPathComponent(item).path)
            let mode = try #require(attributes[.posixPermissions] as? Int)
            let isDirectory = attributes[.type] as? FileAttributeType == .typeDirectory
            #expect(isDirectory ? mode == 0o700 : mode & 0o077 == 0, "\(item) has mode \(String(mode, radix: 8))")
        }
    }
}

/// `dbkey` with a KEK in Vault Transit (OpenBao), configured as Vault's CLI is.
@Suite("dbkey with Vault Transit", .tags(.cli, .vault))
struct DBKeyVaultCLITests {
    @Test("init --kek vault://…, sql, Transit key rotated, status warns, rewrap with no target, opens; local → vault")
    func vaultLifecycle() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let vault = try OpenBao.processEnvironment()
        let kekId = try await OpenBao.createKey(derived: true)
        let created = try await workspace.dbkey(
            "init", workspace.database, "--kek", "vault://" + kekId, "--context", "app=cli", environment: vault)
        #expect(created.status == 0, "\(created.stderr)")
        let sql = try await workspace.dbkey(
            "sql", workspace.database, "CREATE TABLE t(a); INSERT INTO t VALUES ('kept')", environment: vault)
        #expect(sql.status == 0, "\(sql.stderr)")
        #expect(try await workspace.dbkey("rotate", workspace.database, environment: vault).status == 0)

        try await OpenBao.rotate(kekId)
        let warned = try await workspace.dbkey("status", workspace.database, "--json", environment: vault)
        #expect(warned.status == 0, "\(warned.stderr)")
        #expect(warned.stderr.contains("warning: the data key is wrapped under version 1 of \(kekId)"))
        #expect(warned.stderr.contains("dbkey rewrap \(workspace.database)"))
        let before = try #require(try JSONSerialization.jsonObject(with: Data(warned.stdout.utf8)) as? [String: Any])
        #expect(before["kms"] as? String == "vault")
        #expect(before["kek_version"] as? String == "1")
        #expect(before["kek_latest_version"] as? String == "2")
        #expect(before["kek_version_outdated"] as? Bool == true)

        let rewrapped = try await workspace.dbkey("rewrap", workspace.database, environment: vault)
        #expect(rewrapped.status == 0, "\(rewrapped.stderr)")
        #expect(rewrapped.stdout.contains("version 2"))
        let after = try await workspace.dbkey("status", workspace.database, "--json", environment: vault)
        let report = try #require(try JSONSerialization.jsonObject(with: Data(after.stdout.utf8)) as? [String: Any])
        #expect(report["kek_version"] as? String == "2")
        #expect(report["kek_version_outdated"] as? Bool == false)
        #expect(!after.stderr.contains("warning"))
        let rows = try await workspace.dbkey("sql", workspace.database, "SELECT a FROM t", environment: vault)
        #expect(rows.stdout == "kept\n")

        // A database of the local provider moved to Transit, and the token missing.
        let other = try DBKeyCLITests.Workspace()
        #expect(try await other.dbkey("init", other.database).status == 0)
        let moved = try await other.dbkey(
            "rewrap", other.database, "--to", "vault://transit/keys/dbkey", environment: vault)
        #expect(moved.status == 0, "\(moved.stderr)")
        #expect(try KeyFile.read(from: other.database + ".key").kekId == "transit/keys/dbkey")
        let noToken = try await other.dbkey(
            "verify", other.database, environment: ["VAULT_ADDR": try OpenBao.value("ADDR")])
        #expect(noToken.status == 21, "\(noToken.stderr)")
        #expect(noToken.stderr.contains("VAULT_TOKEN"))
    }
}

/// `dbkey` with a KEK on a PKCS#11 token (SoftHSM2).
@Suite("dbkey with a PKCS#11 token", .tags(.cli, .pkcs11))
struct DBKeyPkcs11CLITests {
    @Test(
        "a wrong PIN, 80 times, four processes at once: no run crashes as it ends (the PKCS#11 module outlives every release)"
    )
    func pkcs11ExitRace() async throws {
        try await SoftHSM.exclusively {
            let workspace = try DBKeyCLITests.Workspace()
            let hsm = try SoftHSM.processEnvironment()
            let created = try await workspace.dbkey(
                "init", workspace.database, "--kek", "pkcs11:" + (try SoftHSM.kekId()), environment: hsm)
            #expect(created.status == 0, "\(created.stderr)")
            let wrongPin = workspace.directory.file("wrong.pin")
            _ = FileManager.default.createFile(
                atPath: wrongPin, contents: Data("99999999\n".utf8), attributes: [.posixPermissions: 0o600])
            var wrong = hsm
            wrong[Pkcs11Kms.pinFileVariable] = wrongPin
            let environment = workspace.environment.merging(wrong) { $1 }
            let (executable, database) = (DBKeyCLITests.executable, workspace.database)
            let statuses = try await withThrowingTaskGroup(of: [Int32].self) { group in
                for _ in 0..<4 {
                    group.addTask {
                        var statuses: [Int32] = []
                        for _ in 0..<20 {
                            statuses.append(
                                try await run(executable, ["status", database], environment: environment).status)
                        }
                        return statuses
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(statuses.count == 80)
            #expect(statuses.allSatisfy { $0 < 128 }, "a run crashed: \(statuses)")
            // SoftHSM's file-backed token is sometimes unreadable to one process while another
            // updates it ("no token labelled …": 22, or 20): a limit of SoftHSM, not a crash.
            #expect(statuses.allSatisfy { [20, 21, 22].contains($0) }, "\(statuses)")
            #expect(statuses.filter { $0 == 21 }.count >= 40, "the wrong PIN is what most runs report: \(statuses)")
        }
    }

    @Test("init --kek pkcs11:…, sql, rotate, status, verify; a wrong PIN exits 21 and names the cause, not the PIN")
    func pkcs11Lifecycle() async throws {
        try await SoftHSM.exclusively {
            let workspace = try DBKeyCLITests.Workspace()
            let hsm = try SoftHSM.processEnvironment()
            let kek = "pkcs11:" + (try SoftHSM.kekId())
            let created = try await workspace.dbkey("init", workspace.database, "--kek", kek, environment: hsm)
            #expect(created.status == 0, "\(created.stderr)")
            let sql = try await workspace.dbkey(
                "sql", workspace.database, "CREATE TABLE t(a); INSERT INTO t VALUES ('kept')", environment: hsm)
            #expect(sql.status == 0, "\(sql.stderr)")
            #expect(try await workspace.dbkey("rotate", workspace.database, environment: hsm).status == 0)
            let status = try await workspace.dbkey("status", workspace.database, "--json", environment: hsm)
            let report = try #require(
                try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
            #expect(report["kms"] as? String == "pkcs11")
            #expect(report["kek_id"] as? String == (try SoftHSM.kekId()))
            #expect(report["kms_reachable"] as? Bool == true)
            #expect(report["dek_version"] as? Int == 2)
            #expect(try await workspace.dbkey("verify", workspace.database, environment: hsm).status == 0)

            let wrongPin = workspace.directory.file("wrong.pin")
            _ = FileManager.default.createFile(
                atPath: wrongPin, contents: Data("99999999\n".utf8), attributes: [.posixPermissions: 0o600])
            var wrong = hsm
            wrong[Pkcs11Kms.pinFileVariable] = wrongPin
            let denied = try await workspace.dbkey("verify", workspace.database, environment: wrong)
            #expect(denied.status == 21, "\(denied.stderr)")
            #expect(denied.stderr.contains("wrong PIN"))
            #expect(!denied.stderr.contains("99999999"))
            // status opens the database and asks for the KEK's health: the token sees the wrong PIN once.
            let refused = try await workspace.dbkey("status", workspace.database, environment: wrong)
            #expect(refused.status == 21, "\(refused.stderr)")
            #expect(refused.stdout.contains("not offered again"), "\(refused.stdout)")
            var missingModule = hsm
            missingModule[Pkcs11Kms.moduleVariable] = "/nonexistent/module.so"
            let noModule = try await workspace.dbkey("verify", workspace.database, environment: missingModule)
            #expect(noModule.status == 42 && noModule.stderr.contains("/nonexistent/module.so"), "\(noModule.stderr)")
            let rows = try await workspace.dbkey("sql", workspace.database, "SELECT a FROM t", environment: hsm)
            #expect(rows.stdout == "kept\n")
        }
    }
}

extension DBKeyCLITests {
    /// Runs dbkey in `directory` (its working directory), with `environment`.
    static func dbkey(in directory: String, _ arguments: [String], environment: [String: String]) async throws
        -> ProcessResult
    {
        let shell = try requireTool("sh", installedBy: "dash")
        return try await run(
            shell, ["-c", "cd \"$0\" && exec \"$@\"", directory, executable] + arguments, environment: environment)
    }

    @Test("backup and restore to bare file names (no directory part) work from the working directory")
    func bareFileNames() async throws {
        let workspace = try Workspace()
        let directory = workspace.directory.path
        for arguments in [
            ["init", "app.db"], ["sql", "app.db", "CREATE TABLE t(x); INSERT INTO t VALUES (7)"],
            ["backup", "app.db", "bare.db"], ["restore", "bare.db", "restored.db"],
        ] {
            let result = try await Self.dbkey(in: directory, arguments, environment: workspace.environment)
            #expect(result.status == 0, "\(arguments): \(result.stderr)")
        }
        let read = try await Self.dbkey(
            in: directory, ["sql", "restored.db", "SELECT x FROM t"], environment: workspace.environment)
        #expect(read.stdout == "7\n", "\(read.stderr)")
    }

    @Test("reads create nothing: no lock file for a missing database, no master key when none is configured")
    func readsCreateNothing() async throws {
        let workspace = try Workspace()
        let home = workspace.directory.file("home")
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: false)
        let bare = ["PATH": workspace.environment["PATH"] ?? "/usr/bin:/bin", "HOME": home]
        let before = try FileManager.default.contentsOfDirectory(atPath: workspace.directory.path).sorted()
        let missing = workspace.directory.file("missing.db")
        for arguments in [
            ["sql", missing, "SELECT 1"], ["status", missing], ["verify", missing], ["backup", missing, missing + "2"],
        ] {
            let result = try await Self.dbkey(in: workspace.directory.path, arguments, environment: bare)
            #expect(result.status != 0, "\(arguments)")
        }
        // A database under the local master key, read with no master key configured.
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        let read = try await Self.dbkey(in: home, ["sql", workspace.database, "SELECT 1"], environment: bare)
        #expect(read.status == 14 && read.stderr.contains("nothing was created"), "\(read.status) \(read.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: home).isEmpty, "a master key was created")
        let after = try FileManager.default.contentsOfDirectory(atPath: workspace.directory.path).filter {
            !$0.hasPrefix("app.db")
        }
        #expect(after.sorted() == before, "\(after)")
    }
}

extension DBKeyCLITests {
    @Test(
        "root reading an app-owned database is told to run as the app's user, never to chown its files to root",
        .enabled(if: geteuid() == 0, "needs root, to give files to another user"))
    func rootIsNotToldToChown() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        for file in [database, database + ".key", database + ".key.lock"] {
            #expect(chown(file, 4321, 4321) == 0)
        }
        let read = try await workspace.dbkey("sql", database, "SELECT 1")
        #expect(read.status == 16, "\(read.stderr)")
        #expect(read.stderr.contains("sudo -u '#4321'") && !read.stderr.contains("chown 0"), "\(read.stderr)")
        let doctor = try await workspace.dbkey("doctor", database, "--json")
        #expect(doctor.stdout.contains("sudo -u '#4321'"), "\(doctor.stdout)")
        #expect(!doctor.stdout.contains("chown $(id -u)") && !doctor.stdout.contains("chown 0"), "\(doctor.stdout)")
    }
}

extension DBKeyCLITests {
    @Test(
        "on a read-only file system, sql, verify, status, doctor and backup (to a writable place) work, with or without a lock file",
        .enabled(if: geteuid() == 0, "needs root, to mount a read-only bind of the database's folder"),
        arguments: [true, false])
    func readOnlyFileSystem(withLockFile: Bool) async throws {
        let workspace = try Workspace()
        let source = workspace.directory.file("src")
        let readOnly = workspace.directory.file("ro")
        for folder in [source, readOnly] {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        }
        #expect(try await workspace.dbkey("init", source + "/app.db").status == 0)
        #expect(
            try await workspace.dbkey("sql", source + "/app.db", "CREATE TABLE t(x); INSERT INTO t VALUES (5)").status
                == 0)
        if !withLockFile { #expect(unlink(source + "/app.db.key.lock") == 0) }
        let mount = try requireTool("mount", installedBy: "mount")
        let bound = try await run(mount, ["--bind", source, readOnly])
        try #require(bound.status == 0, "mount --bind: \(bound.stderr)")
        defer { _ = try? runUnmount(readOnly) }
        let remounted = try await run(mount, ["-o", "remount,bind,ro", readOnly])
        try #require(remounted.status == 0, "remount read-only: \(remounted.stderr)")
        let database = readOnly + "/app.db"
        let read = try await workspace.dbkey("sql", database, "SELECT x FROM t")
        #expect(read.status == 0 && read.stdout == "5\n", "\(read.stderr)")
        for arguments in [["verify", database], ["status", database], ["doctor", database]] {
            let result = try await workspace.dbkey(arguments)
            #expect(result.status == 0, "\(arguments[0]): \(result.stderr)")
        }
        let backup = workspace.directory.file("backup.db")
        let made = try await workspace.dbkey("backup", database, backup)
        #expect(made.status == 0, "\(made.stderr)")
        #expect(try await workspace.dbkey("sql", backup, "SELECT x FROM t").stdout == "5\n")
    }

    /// Unmounts `path`, waiting for nothing.
    func runUnmount(_ path: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try requireTool("umount", installedBy: "mount"))
        process.arguments = [path]
        try process.run()
        process.waitUntilExit()
    }
}
