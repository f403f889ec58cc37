import Foundation
import Testing

@testable import SQLCipherKeyManager
@testable import KmsHTTP
@testable import SQLCipherKeyManagerAWS

#if canImport(Glibc)
    import Glibc
#endif

@Suite("AWS KMS provider against moto", .tags(.aws))
struct AwsKmsMotoTests {
    let context: EncryptionContext = ["purpose": "aws-test", "tenant": "t-9"]

    @Test("a wrong secret is refused by moto's signature check and reported as access denied, without the secret")
    func wrongSecret() async throws {
        let kms = try Moto.provider(secret: "definitely-not-the-secret-key-0123456789")
        let error = await expectError(.kmsAccessDenied, containing: ["SignatureDoesNotMatch"]) {
            _ = try await kms.generateDataKey(kekId: try Moto.keyArn(), context: context)
        }
        #expect(error?.message.contains("definitely-not-the-secret") == false)
        #expect(error?.message.contains(try Moto.value("SECRET_ACCESS_KEY")) == false)
    }

    @Test("init → sql → rotate → rewrap to a second AWS key (ReEncrypt) → open, with a key in moto")
    func lifecycle() async throws {
        let transport = CountingTransport()
        let kms = try Moto.provider(transport: transport)
        let database = try await TestDatabase(rows: 200, kms: kms, kekId: try Moto.keyArn())
        let manager = database.manager()
        #expect(try manager.load().kms == "aws")
        #expect(try manager.load().kekId == (try Moto.keyArn()))
        let rotated = try await manager.rotateKey()
        #expect(rotated.version == 2)
        try await database.expectIntact()

        transport.reset()
        let rewrapped = try await manager.rewrap(to: kms, kekId: try Moto.secondKeyArn())
        #expect(rewrapped.kekId == (try Moto.secondKeyArn()))
        #expect(transport.count("ReEncrypt") == 1, "between AWS keys the plaintext does not leave KMS")
        #expect(transport.count("Encrypt") == 0)
        try await database.expectIntact(database.manager(kms: kms))
        let status = try await database.manager().status()
        #expect(try status.kmsHealth.get().keyState == "Enabled")
        #expect(status.databaseOpens)
    }

    @Test("an alias is resolved to the key ARN in the .key file")
    func aliasResolved() async throws {
        let database = try await TestDatabase(rows: 10, kms: try Moto.provider(), kekId: try Moto.alias())
        #expect(try database.manager().load().kekId == (try Moto.keyArn()))
    }

    @Test("a wrong encryption context in the .key is refused by the KMS as invalid ciphertext")
    func contextEnforced() async throws {
        let database = try await TestDatabase(rows: 10, kms: try Moto.provider(), kekId: try Moto.keyArn())
        var keyFile = try database.manager().load()
        keyFile.encryptionContext = ["purpose": "something-else"]
        try keyFile.write(to: database.path + ".key")
        await expectError(.ciphertextInvalid) { _ = try await database.manager().open() }
    }

    @Test("interop: boto3 decrypts a DEK we generated, and that plaintext opens the database in the sqlcipher shell")
    func boto3DecryptsOurs() async throws {
        let database = try await TestDatabase(
            rows: 30, kms: try Moto.provider(), kekId: try Moto.keyArn(), context: context)
        let keyFile = try database.manager().load()
        let answer = try await Moto.boto3([
            "op": "decrypt", "blob": keyFile.encryptedDek.encoded, "key_id": keyFile.kekId,
            "context": context.dictionary,
        ])
        let plaintext = secureBuffer(hex: try #require(answer["plaintext_hex"]))
        #expect(plaintext == (try await database.currentKey()))
        #expect(try await sqlcipherShellOpens(database.path, key: plaintext))
    }

    @Test("interop: a CiphertextBlob from boto3's generate_data_key, in a seven-field .key, opens through the manager")
    func oursDecryptsBoto3() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("legacy.db")
        let generated = try await Moto.boto3([
            "op": "generate", "key_id": try Moto.keyArn(), "context": ["purpose": "medical-db"],
        ])
        // The database an older tool made with that key: SQLCipher 3's format and 1024-byte pages.
        let key = secureBuffer(hex: try #require(generated["plaintext_hex"]))
        let db = try DatabaseConnection.open(path: path, key: key, cipher: CipherSettings(pageSize: 1024), create: true)
        try db.execute(
            "CREATE TABLE visit(id INTEGER PRIMARY KEY, note TEXT); INSERT INTO visit(note) VALUES ('from boto3')")
        db.close()
        let sevenField: [String: Any] = [
            "encrypted_dek": try #require(generated["blob"]), "kek_id": try #require(generated["key_id"]), "version": 1,
            "created_at": "2024-01-15T10:30:00Z", "rotated_at": NSNull(),
            "encryption_context": ["purpose": "medical-db"], "dek_spec": "AES_256",
        ]
        _ = FileManager.default.createFile(
            atPath: path + ".key", contents: try JSONSerialization.data(withJSONObject: sevenField),
            attributes: [.posixPermissions: 0o600])
        let manager = DatabaseKeyManager(databasePath: path, kms: try Moto.provider(), logger: silentLogger)
        #expect(try manager.load().kms == "aws", "inferred from the ARN")
        let connection = try await manager.open()
        #expect(try connection.fetchAll("SELECT note FROM visit").first?[0] == .text("from boto3"))
    }

    @Test("Decrypt calls counted at the transport: 1 cold, 0 warm, 1 after the TTL, 1 after a rotation")
    func cacheCounts() async throws {
        let transport = CountingTransport()
        let kms = try Moto.provider(transport: transport)
        let database = try await TestDatabase(rows: 10, kms: kms, kekId: try Moto.keyArn())
        let manager = DatabaseKeyManager(
            databasePath: database.path, kms: kms, configuration: .init(keyCacheTTL: .seconds(2)), logger: silentLogger)
        transport.reset()
        try await manager.open().close()
        #expect(transport.count("Decrypt") == 1, "cold")
        try await manager.open().close()
        #expect(transport.count("Decrypt") == 1, "warm")
        try await Task.sleep(for: .milliseconds(2500))
        try await manager.open().close()
        #expect(transport.count("Decrypt") == 2, "after the TTL")
        try await manager.rotateKey()
        transport.reset()
        try await manager.open().close()
        #expect(transport.count("Decrypt") == 1, "after a rotation")
    }
}

@Suite("AWS KMS provider: retries, timeouts and error mapping", .tags(.aws))
struct AwsKmsFaultTests {
    let retry = RetryPolicy(attempts: 3, timeout: .seconds(5), initialBackoff: .milliseconds(10))

    @Test("throttling, then success: retried and succeeds")
    func throttlingRetried() async throws {
        let transport = ScriptedTransport([
            .status(400, #"{"__type":"ThrottlingException","message":"Rate exceeded"}"#),
            .status(503, "Service Unavailable"),
        ])
        let kms = try Moto.provider(retry: retry, transport: transport)
        let dataKey = try await kms.generateDataKey(kekId: try Moto.keyArn(), context: .empty)
        #expect(dataKey.plaintext.count == 32)
        #expect(transport.calls == 3)
    }

    @Test(
        "moto behind a quota: ThrottlingException is retried past the attempts until admitted, each counted by a fleet's limiter; botocore classes the same answer as throttling"
    )
    func quota() async throws {
        let kms = try Moto.provider(
            endpoint: try MotoThrottlingFront.adminURL(),
            retry: .init(attempts: 1, timeout: .seconds(5), initialBackoff: .milliseconds(5)))
        let dataKey = try await kms.generateDataKey(kekId: try Moto.keyArn(), context: ["purpose": "quota"])
        // 20 decrypts a second, no burst: eight at once are throttled however slow the machine.
        try await MotoThrottlingFront.rateLimit(20, path: "TrentService.Decrypt")
        let limiter = KmsRateLimiter(requestsPerSecond: nil)
        let limited = try KmsRegistry(kms).rateLimited(limiter).provider(named: kms.providerName)
        let unwrapped = try await withThrowingTaskGroup(of: Bool.self) { group in
            for _ in 0..<8 {
                group.addTask {
                    try await limited.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: ["purpose": "quota"])
                        == dataKey.plaintext
                }
            }
            return try await group.allSatisfy { $0 }
        }
        let front = try await MotoThrottlingFront.rateLimitCounts()
        #expect(unwrapped && front.admitted == 8, "every decrypt came through once: \(front)")
        #expect(front.throttled > 0 && limiter.throttled == front.throttled, "\(limiter.throttled) of \(front)")

        // botocore, with its retries off, gets the front's answer as a throttling error.
        // One decrypt a 1,000 s: the first takes the token, the second is throttled.
        try await MotoThrottlingFront.rateLimit(0.001, path: "TrentService.Decrypt")
        let python = try requireTool("python3", installedBy: "python3")
        let script = """
            import base64, os, sys, boto3, botocore.config, botocore.exceptions
            from botocore.retries.standard import RetryContext, ThrottledRetryableChecker
            e = os.environ
            kms = boto3.client("kms", endpoint_url=e["DBKEY_TEST_AWS_THROTTLING_ENDPOINT"], region_name=e["DBKEY_TEST_AWS_REGION"],
                aws_access_key_id=e["DBKEY_TEST_AWS_ACCESS_KEY_ID"], aws_secret_access_key=e["DBKEY_TEST_AWS_SECRET_ACCESS_KEY"],
                config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}))
            kms.decrypt(CiphertextBlob=base64.b64decode(sys.argv[1]), EncryptionContext={"purpose": "quota"})  # the one token
            try:
                kms.decrypt(CiphertextBlob=base64.b64decode(sys.argv[1]), EncryptionContext={"purpose": "quota"})
            except botocore.exceptions.ClientError as error:
                context = RetryContext(attempt_number=1, parsed_response=error.response, http_response=None)
                print(error.response["Error"]["Code"], ThrottledRetryableChecker().is_retryable(context))
            """
        let environment = Moto.variables.filter {
            $0.key.hasPrefix("DBKEY_TEST_AWS_") || $0.key == "PATH" || $0.key == "HOME"
        }
        let result = try await run(python, ["-c", script, dataKey.wrapped.encoded], environment: environment)
        try await MotoThrottlingFront.rateLimit(nil)
        #expect(result.stdout == "ThrottlingException True\n", "\(result.stdout) \(result.stderr)")
    }

    @Test(
        "a permanent error is not retried",
        arguments: [
            (#"{"__type":"AccessDeniedException","message":"no"}"#, 400, DBKeyError.Code.kmsAccessDenied),
            (#"{"__type":"com.amazonaws.kms#NotFoundException","message":"Invalid keyId"}"#, 400, .kmsKeyNotFound),
            (#"{"__type":"DisabledException","message":"key is disabled"}"#, 400, .kmsKeyDisabled),
            (#"{"__type":"KMSInvalidStateException","message":"pending deletion"}"#, 400, .kmsKeyDisabled),
            (#"{"__type":"InvalidCiphertextException"}"#, 400, .ciphertextInvalid),
            (#"{"__type":"IncorrectKeyException"}"#, 400, .ciphertextInvalid),
            ("<ErrorResponse><Error><Code>InvalidClientTokenId</Code></Error></ErrorResponse>", 403, .kmsAccessDenied),
        ])
    func permanentErrors(body: String, status: Int, code: DBKeyError.Code) async throws {
        let transport = ScriptedTransport([.status(status, body)])
        let kms = try Moto.provider(retry: retry, transport: transport)
        await expectError(code) { _ = try await kms.generateDataKey(kekId: try Moto.keyArn(), context: .empty) }
        #expect(transport.calls == 1)
    }

    @Test("retries stop after the configured attempts, as a retryable error")
    func attemptsBounded() async throws {
        let transport = ScriptedTransport(Array(repeating: .unreachable, count: 5))
        let kms = try Moto.provider(retry: retry, transport: transport)
        let error = await expectError(.kmsUnavailable) { _ = try await kms.health(kekId: try Moto.keyArn()) }
        #expect(error?.isRetryable == true)
        #expect(transport.calls == 3)
    }

    @Test("a server that never answers: every attempt is cut at its timeout, and retries stop")
    func neverAnswers() async throws {
        let server = try SilentServer()
        let timing = TimingTransport()
        let kms = AWSKms(
            credentials: try Moto.credentials(), region: "us-east-1", endpoint: server.url,
            retry: .init(attempts: 2, timeout: .milliseconds(500), initialBackoff: .milliseconds(50)),
            transport: timing, logger: silentLogger)
        await expectError(.kmsUnavailable, containing: ["did not answer within 0.5 s"]) {
            _ = try await kms.health(kekId: "arn:aws:kms:us-east-1:123456789012:key/x")
        }
        #expect(timing.durations.count == 2)
        // Timed here, inside a process whose threads the other tests share, only the floor is
        // exact; the ceiling is checked on a dbkey process of its own below.
        #expect(timing.durations.allSatisfy { $0 >= .milliseconds(500) })
    }

    @Test("dbkey status against a server that never answers ends within attempts × timeout")
    func neverAnswersBounded() async throws {
        let server = try SilentServer()
        let workspace = try DBKeyCLITests.Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        var keyFile = try KeyFile.read(from: workspace.database + ".key")
        keyFile.kms = "aws"
        keyFile.kekId = "arn:aws:kms:us-east-1:123456789012:key/silent"
        try keyFile.write(to: workspace.database + ".key")
        var environment = try Moto.processEnvironment()
        environment["AWS_ENDPOINT_URL_KMS"] = server.url.absoluteString
        environment["AWS_MAX_ATTEMPTS"] = "2"
        environment[RetryPolicy.timeoutVariable] = "0.5"
        let clock = ContinuousClock()
        let started = clock.now
        let result = try await workspace.dbkey("status", workspace.database, environment: environment)
        let elapsed = clock.now - started
        #expect(result.status == 20, "\(result.stderr)")
        #expect(result.stdout.contains("did not answer within 0.5 s"), "the report says why")
        // status makes two calls (open's Decrypt, then DescribeKey), each 2 × 0.5 s + backoff:
        // about 2.2 s on an idle machine; the defaults would take 2 × 3 × 10 s. The ceiling
        // leaves room for a machine busy with the rest of the suite (10.3 s was seen on two
        // cores while the fleet and kill tests ran beside it).
        #expect(elapsed >= .seconds(2) && elapsed < .seconds(20), "\(elapsed)")
    }

    @Test("health reports a key pending deletion as disabled")
    func healthOfPendingDeletion() async throws {
        let transport = ScriptedTransport([
            .status(
                200,
                #"{"KeyMetadata":{"Arn":"arn:aws:kms:us-east-1:1:key/k","KeyState":"PendingDeletion","Enabled":false}}"#
            )
        ])
        let kms = try Moto.provider(retry: retry, transport: transport)
        await expectError(.kmsKeyDisabled, containing: ["PendingDeletion"]) {
            _ = try await kms.health(kekId: "arn:aws:kms:us-east-1:1:key/k")
        }
    }

    @Test("the region comes from a key ARN, else from the configuration")
    func regions() throws {
        let kms = AWSKms(credentials: try Moto.credentials(), region: "eu-west-1", endpoint: nil, logger: silentLogger)
        #expect(try kms.region(for: "arn:aws:kms:ap-south-1:123456789012:key/abc") == "ap-south-1")
        #expect(try kms.region(for: "alias/app") == "eu-west-1")
        let noRegion = AWSKms(credentials: try Moto.credentials(), region: nil, endpoint: nil, logger: silentLogger)
        #expect(throws: DBKeyError.self) { try noRegion.region(for: "alias/app") }
    }
}

@Suite("AWS credentials and configuration, as the SDKs find them", .tags(.aws))
struct AWSEnvironmentTests {
    @Test("environment variables come first")
    func fromEnvironment() throws {
        let aws = AWSEnvironment(variables: [
            "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret", "AWS_SESSION_TOKEN": "tok",
            "AWS_REGION": "eu-central-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        ])
        let credentials = try aws.credentials()
        #expect(credentials.accessKeyId == "AKIAENV")
        #expect(credentials.secretAccessKey.withUnsafeBytes { Array($0) } == Array("env-secret".utf8))
        #expect(credentials.sessionToken == "tok")
        #expect(try aws.region() == "eu-central-1")
        #expect(aws.endpointOverride == "http://127.0.0.1:1")
        #expect(!credentials.description.contains("env-secret") && !credentials.description.contains("tok)"))
    }

    @Test("the shared credentials and config files, with AWS_PROFILE; the KMS endpoint variable wins")
    func fromFiles() throws {
        let directory = try TemporaryDirectory()
        let credentialsFile = directory.file("credentials")
        let configFile = directory.file("config")
        _ = FileManager.default.createFile(
            atPath: credentialsFile,
            contents: Data(
                "[default]\naws_access_key_id = AKIADEFAULT\naws_secret_access_key = default-secret\n\n[ops]\naws_access_key_id=AKIAOPS\naws_secret_access_key=ops-secret\n"
                    .utf8),
            attributes: [.posixPermissions: 0o600])
        _ = FileManager.default.createFile(
            atPath: configFile,
            contents: Data("[default]\nregion = us-west-2\n[profile ops]\nregion = eu-north-1\n".utf8),
            attributes: [.posixPermissions: 0o600])
        let base = ["AWS_SHARED_CREDENTIALS_FILE": credentialsFile, "AWS_CONFIG_FILE": configFile]
        let defaults = AWSEnvironment(variables: ProviderEnvironment(base))
        #expect(try defaults.credentials().accessKeyId == "AKIADEFAULT")
        #expect(try defaults.region() == "us-west-2")
        let ops = AWSEnvironment(
            variables: ProviderEnvironment(
                base.merging([
                    "AWS_PROFILE": "ops", "AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_KMS": "http://b",
                ]) { $1 }))
        #expect(try ops.credentials().accessKeyId == "AKIAOPS")
        #expect(try ops.credentials().secretAccessKey.withUnsafeBytes { Array($0) } == Array("ops-secret".utf8))
        #expect(try ops.region() == "eu-north-1")
        #expect(ops.endpointOverride == "http://b")
    }

    @Test("no credentials anywhere is access denied with advice; a credentials file others can read is refused")
    func missingOrInsecure() async throws {
        let directory = try TemporaryDirectory()
        await expectError(.kmsAccessDenied, containing: ["AWS_ACCESS_KEY_ID", "AWS_EC2_METADATA_DISABLED"]) {
            _ = try AWSEnvironment(variables: ["HOME": directory.path, "AWS_EC2_METADATA_DISABLED": "true"])
                .credentials()
        }
        // With nothing else, the instance metadata service is the last source.
        #expect(
            try AWSEnvironment(variables: ["HOME": directory.path]).credentialProvider(region: nil).summary
                == "the EC2 instance role (IMDS at 169.254.169.254)")
        let file = directory.file("credentials")
        _ = FileManager.default.createFile(
            atPath: file, contents: Data("[default]\naws_access_key_id=A\naws_secret_access_key=s\n".utf8),
            attributes: [.posixPermissions: 0o644])
        await expectError(.keyFileInsecure, containing: ["chmod 600"]) {
            _ = try AWSEnvironment(variables: ["AWS_SHARED_CREDENTIALS_FILE": file]).credentials()
        }
    }
}

/// A listening socket that never accepts: a connection opens, no answer ever comes.
final class SilentServer {
    let socket: Int32
    let url: URL

    init() throws {
        socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let socket = self.socket
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socket, $0, length) == 0 && listen(socket, 16) == 0 && getsockname(socket, $0, &length) == 0
            }
        }
        try #require(bound, "could not listen on 127.0.0.1")
        url = URL(string: "http://127.0.0.1:\(UInt16(bigEndian: address.sin_port))/")!
    }

    deinit {
        close(socket)
    }
}

extension AWSEnvironment {
    /// The fixed credentials the chain finds (the environment's or a file's); tests only.
    func credentials() throws -> AWSCredentials {
        guard case .fixed(let credentials) = try credentialProvider(region: nil).source else {
            throw DBKeyError(.kmsAccessDenied, "not fixed credentials")
        }
        return credentials
    }
}
