import Crypto
import Foundation
import SQLCipherKeyManagerConformance
import Testing

import SQLCipherKeyManagerTesting

@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerTPM

/// The software TPMs `Scripts/test` starts (through `Scripts/swtpm`).
enum SoftwareTPM {
    static func tcti(_ name: String = "DEVICE") throws -> String {
        try scriptVariable("DBKEY_TEST_TPM_\(name)_TCTI", describing: "software TPM")
    }

    static func provider(_ name: String = "DEVICE") throws -> Tpm2Kms {
        Tpm2Kms(tcti: try tcti(name), logger: silentLogger)
    }

    /// Runs a tpm2-tools command against the device TPM, then flushes what it left loaded
    /// (there is no resource manager).
    @discardableResult
    static func tool(_ name: String, _ arguments: [String]) async throws -> ProcessResult {
        let executable = try requireTool(name, installedBy: "tpm2-tools")
        let environment = ["TPM2TOOLS_TCTI": try tcti(), "PATH": ProcessInfo.processInfo.environment["PATH"] ?? ""]
        let result = try await run(executable, arguments, environment: environment)
        for kind in ["-t", "-s", "-l"] {
            _ = try await run(
                try requireTool("tpm2_flushcontext", installedBy: "tpm2-tools"), [kind], environment: environment)
        }
        return result
    }
}

/// One TPM test at a time: the device has no resource manager, and tpm2-tools and DBKey take
/// turns on it.
private let tpmTurn = AsyncMutex()

@Suite("TPM 2.0 provider against swtpm and tpm2-tools", .serialized, .tags(.tpm))
struct Tpm2KmsTests {
    let context: EncryptionContext = ["purpose": "tpm-test"]

    @Test("the conformance suite; bound to PCRs 0 and 7, every check but the primary KEK's database lifecycle")
    func conformance() async throws {
        try await tpmTurn.run {
            try await KmsConformanceSuite(kekId: "") { try SoftwareTPM.provider() }.run()
            let bound = KmsConformanceSuite(kekId: "?pcrs=sha256:0,7") { try SoftwareTPM.provider() }
            try await bound.generateThenDecrypt()
            try await bound.freshness()
            try await bound.encryptThenDecrypt()
            try await bound.contextEnforced()
            try await bound.tamperDetected()
            try await bound.health()
            try bound.providerName()
        }
    }

    @Test("tpm2-tools unseals what DBKey sealed (data key and context digest), and DBKey what tpm2_create sealed")
    func tpm2ToolsBothWays() async throws {
        try await tpmTurn.run {
            let directory = try TemporaryDirectory()
            let kms = try SoftwareTPM.provider()
            let dataKey = try await kms.generateDataKey(kekId: "?pcrs=sha256:0,7", context: context)
            #expect(dataKey.kekId == "0x81000001?pcrs=sha256:0,7")
            let encoded = try #require(dataKey.wrapped.encoded.split(separator: ":").last)
            let blob = try #require(Base64.decode(String(encoded)))
            let publicSize = Int(blob[0]) << 8 | Int(blob[1]) + 2
            #expect(
                FileManager.default.createFile(
                    atPath: directory.file("ours.pub"), contents: Data(blob.prefix(publicSize))))
            #expect(
                FileManager.default.createFile(
                    atPath: directory.file("ours.priv"), contents: Data(blob.dropFirst(publicSize))))
            try await SoftwareTPM.tool(
                "tpm2_load",
                [
                    "-C", "0x81000001", "-u", directory.file("ours.pub"), "-r", directory.file("ours.priv"), "-c",
                    directory.file("ours.ctx"),
                ])
            let unsealed = try await SoftwareTPM.tool(
                "tpm2_unseal",
                ["-c", directory.file("ours.ctx"), "-p", "pcr:sha256:0,7", "-o", directory.file("ours.out")])
            #expect(unsealed.status == 0, "\(unsealed.stderr)")
            let expected =
                dataKey.plaintext.withUnsafeBytes { Data($0) } + Data(SHA256.hash(data: context.canonicalEncoding))
            #expect(try contents(directory.file("ours.out")) == expected)

            // The reverse: tpm2_create seals a key and digest of ours, with no policy.
            let key = try SecureBuffer.random(count: 32)
            _ = FileManager.default.createFile(
                atPath: directory.file("theirs.in"),
                contents: key.withUnsafeBytes { Data($0) } + Data(SHA256.hash(data: context.canonicalEncoding)))
            let created = try await SoftwareTPM.tool(
                "tpm2_create",
                [
                    "-C", "0x81000001", "-i", directory.file("theirs.in"), "-u", directory.file("theirs.pub"), "-r",
                    directory.file("theirs.priv"),
                ])
            #expect(created.status == 0, "\(created.stderr)")
            let theirs = try contents(directory.file("theirs.pub")) + contents(directory.file("theirs.priv"))
            let wrapped = WrappedDataKey(encoded: "tpm2:" + theirs.base64EncodedString())
            #expect(try await kms.decrypt(wrapped, kekId: "", context: context) == key)
        }
    }

    @Test("another TPM refuses the blob as key not found; a changed PCR is access denied; no TPM is unavailable")
    func refusals() async throws {
        try await tpmTurn.run {
            let kms = try SoftwareTPM.provider()
            let sealed = try await kms.generateDataKey(kekId: "", context: context)
            await expectError(.kmsKeyNotFound, containing: ["another TPM"]) {
                _ = try await SoftwareTPM.provider("OTHER").decrypt(sealed.wrapped, kekId: "", context: context)
            }
            // PCR 16 (the debug PCR) can be reset afterwards, so the other tests' PCRs stay as they were.
            let bound = try await kms.generateDataKey(kekId: "?pcrs=sha256:16", context: context)
            #expect(try await kms.decrypt(bound.wrapped, kekId: "?pcrs=sha256:16", context: context) == bound.plaintext)
            try await SoftwareTPM.tool("tpm2_pcrextend", ["16:sha256=" + String(repeating: "ab", count: 32)])
            await expectError(.kmsAccessDenied, containing: ["PCRs", "16"]) {
                _ = try await kms.decrypt(bound.wrapped, kekId: "?pcrs=sha256:16", context: context)
            }
            try await SoftwareTPM.tool("tpm2_pcrreset", ["16"])
            #expect(try await kms.decrypt(bound.wrapped, kekId: "?pcrs=sha256:16", context: context) == bound.plaintext)
            await expectError(.kmsUnavailable, containing: ["No TPM"]) {
                _ = try await Tpm2Kms(tcti: "swtpm:host=127.0.0.1,port=9", logger: silentLogger)
                    .generateDataKey(kekId: "", context: context)
            }
            await expectError(.invalidConfiguration) { _ = try Tpm2Kms.pcrMask("?pcrs=sha1:0") }
            await expectError(.invalidConfiguration) { _ = try Tpm2Kms.pcrMask("?pcrs=sha256:24") }
            #expect(try Tpm2Kms.pcrMask("?pcrs=sha256:0,7") == 0x81)
        }
    }

    @Test(
        "a PCR-bound TPM key is refused as a database's primary KEK, and serves as a slot beside one; the database then opens through the TPM alone"
    )
    func slotBesideAnotherKek() async throws {
        try await tpmTurn.run {
            let directory = try TemporaryDirectory()
            let path = directory.file("offline.db")
            let tpm = try SoftwareTPM.provider()
            let refused = DatabaseKeyManager(
                databasePath: path, kms: tpm, configuration: .init(kekId: "?pcrs=sha256:0,7"), logger: silentLogger)
            await expectError(.invalidConfiguration, containing: ["cannot be the primary KEK", "key slot"]) {
                try await refused.initialize()
            }
            #expect(
                !FileManager.default.fileExists(atPath: path) && !FileManager.default.fileExists(atPath: path + ".key"))
            // The primary in a cloud KMS (a mock here), the TPM slot for opening without it.
            let cloud = MockKms()
            let registry = KmsRegistry(providers: [cloud, tpm])
            let manager = DatabaseKeyManager(
                databasePath: path, providers: registry,
                configuration: .init(kekId: "cloud-kek", kekProvider: "mock"), logger: silentLogger)
            try await manager.initialize()
            let withSlot = try await manager.addSlot(tpm, kekId: "?pcrs=sha256:0,7")
            #expect(withSlot.slots.map(\.kms) == ["tpm2"])
            await expectError(.invalidConfiguration, containing: ["cannot be the primary KEK"]) {
                try await manager.rewrap(to: tpm, kekId: "?pcrs=sha256:0,7")
            }
            // Offline: the cloud KMS is unreachable, and the TPM slot opens the database.
            let before = cloud.calls(of: .decrypt).count
            cloud.failNext(1, [.decrypt], with: DBKeyError(.kmsUnavailable, "no network"))
            let offline = DatabaseKeyManager(
                databasePath: path, providers: registry,
                configuration: .init(kekId: "cloud-kek", kekProvider: "mock"), logger: silentLogger)
            let key = try await offline.leaseKey()
            #expect(key.version == 1)
            #expect(cloud.calls(of: .decrypt).count == before + 1, "the primary was tried first")
            key.release()
        }
    }
}

/// `dbkey` with a TPM slot beside a local primary.
@Suite("dbkey with a TPM slot", .tags(.cli, .tpm))
struct DBKeyTpmCLITests {
    @Test(
        "init --kek local --slot-kek tpm2://?pcrs=…: the slot is made; a PCR-bound TPM KEK alone is refused, nothing created"
    )
    func slotFromTheCommandLine() async throws {
        try await tpmTurn.run {
            let workspace = try DBKeyCLITests.Workspace()
            let tpm = ["DBKEY_TPM_TCTI": try SoftwareTPM.tcti()]
            let created = try await workspace.dbkey(
                "init", workspace.database, "--kek", "local://default", "--slot-kek", "tpm2://?pcrs=sha256:0,7",
                environment: tpm)
            #expect(created.status == 0, "\(created.stderr)")
            let keyFile = try KeyFile.read(from: workspace.database + ".key")
            #expect(keyFile.slots.map(\.kms) == ["tpm2"] && keyFile.slots.map(\.kekId) == ["?pcrs=sha256:0,7"])
            #expect(try await workspace.dbkey("verify", workspace.database, environment: tpm).status == 0)
            let other = workspace.directory.file("tpm-only.db")
            let refused = try await workspace.dbkey("init", other, "--kek", "tpm2://?pcrs=sha256:0,7", environment: tpm)
            #expect(refused.status != 0 && refused.stderr.contains("cannot be the primary KEK"), "\(refused.stderr)")
            #expect(
                !FileManager.default.fileExists(atPath: other)
                    && !FileManager.default.fileExists(atPath: other + ".key"))
        }
    }
}

/// Runs one body at a time.
actor AsyncMutex {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func run<T: Sendable>(_ body: @Sendable () async throws -> T) async throws -> T {
        while busy { await withCheckedContinuation { waiters.append($0) } }
        busy = true
        defer {
            busy = false
            if !waiters.isEmpty { waiters.removeFirst().resume() }
        }
        return try await body()
    }
}
