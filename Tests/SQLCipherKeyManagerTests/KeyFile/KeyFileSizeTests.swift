import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

/// No write can make a `.key` file that nothing reads: a context too large for the file in its
/// largest state is refused before anything is created, and every state a key change passes
/// through stays under 64 KiB.
@Suite("The .key file's size in every state", .tags(.core))
struct KeyFileSizeTests {
    /// Characters JSON escapes to six bytes, or encodes in several: the worst cases for size.
    static let alphabet: [Character] = ["a", "Z", "0", "\"", "\\", "\u{01}", "\u{1F}", "é", "😀", " "]

    static func randomString(bytes limit: Int, _ random: inout KeyFileFuzzTests.Generator) -> String {
        var text = ""
        while true {
            let next = alphabet.randomElement(using: &random)!
            guard text.utf8.count + String(next).utf8.count <= limit else { return text }
            text.append(next)
        }
    }

    static func randomContext(_ random: inout KeyFileFuzzTests.Generator) -> EncryptionContext {
        // Mostly within the pair limits, where only the file's size can refuse; sometimes past
        // them.
        let beyond = Int.random(in: 0..<5, using: &random) == 0
        var pairs: [String: String] = [:]
        for _ in 0..<Int.random(in: 0...(beyond ? 20 : 16), using: &random) {
            let key = randomString(bytes: Int.random(in: 1...(beyond ? 160 : 128), using: &random), &random)
            pairs[key.isEmpty ? "k" : key] = randomString(
                bytes: Int.random(in: 0...(beyond ? 1400 : 1024), using: &random), &random)
        }
        return EncryptionContext(pairs)
    }

    @Test(
        "a property over contexts: refused up front with nothing left, or every state (pending included) stays readable"
    )
    func property() async throws {
        let seed = UInt64.random(in: 0...UInt64.max)
        var random = KeyFileFuzzTests.Generator(state: seed)
        var (refused, accepted, largest) = (0, 0, 0)
        for round in 0..<40 {
            let directory = try TemporaryDirectory()
            let path = directory.file("s.db")
            let kms = MockKms(seed: UInt64(round))
            let context = Self.randomContext(&random)
            let manager = DatabaseKeyManager(
                databasePath: path, kms: kms, configuration: .init(kekId: "k", encryptionContext: context),
                logger: silentLogger)
            do {
                try await manager.initialize()
            } catch let error as DBKeyError {
                #expect(error.code == .invalidConfiguration, "seed \(seed): \(error)")
                #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty, "seed \(seed)")
                refused += 1
                continue
            }
            accepted += 1
            // The largest state: a rotation journaled and interrupted before its last write.
            let failing = DatabaseKeyManager(
                databasePath: path, providers: KmsRegistry(kms), configuration: .init(kekId: "k"),
                logger: silentLogger,
                faultInjector: { if $0 == .writingFinalKeyFile { throw DBKeyError(.io, "injected") } })
            await expectError(.io) { try await failing.rotateKey() }
            let pendingSize = try contents(path + ".key").count
            largest = max(largest, pendingSize)
            #expect(pendingSize <= KeyFile.maximumSize, "seed \(seed): \(pendingSize) bytes")
            #expect(try KeyFile.read(from: path + ".key").pending != nil)
            try await manager.open().close()
            #expect(try manager.load().version == 2, "seed \(seed): the pending rotation settled")
        }
        print(
            "key file sizes (seed \(seed)): \(accepted) contexts accepted, \(refused) refused, largest pending state \(largest) bytes"
        )
        #expect(accepted > 0, "seed \(seed): some contexts must be accepted for the states to be checked")
    }

    @Test("the issue's examples: a 66,000-byte value, and a context that fits until a pending record is added")
    func examples() async throws {
        let directory = try TemporaryDirectory()
        let huge = DatabaseKeyManager(
            databasePath: directory.file("h.db"), kms: MockKms(seed: 1),
            configuration: .init(kekId: "k", encryptionContext: ["k": String(repeating: "x", count: 66_000)]),
            logger: silentLogger)
        await expectError(.invalidConfiguration, containing: ["limit is 1024"]) { try await huge.initialize() }
        // Sixteen values of control characters, within the pair limits but six bytes each in
        // JSON, sized so that the .key fits without a pending record and not with one: found by
        // measuring the record MockKms's key would give.
        let kms = MockKms(seed: 2)
        let dataKey = try await kms.generateDataKey(kekId: "k", context: .empty)
        func context(_ length: Int) -> EncryptionContext {
            EncryptionContext(
                Dictionary(
                    uniqueKeysWithValues: (0..<16).map { ("k\($0)", String(repeating: "\u{01}", count: length)) }))
        }
        func record(_ length: Int) -> KeyFile {
            var keyFile = KeyFile(
                kms: "mock", kekId: dataKey.kekId, encryptedDek: dataKey.wrapped, createdAt: KeyFile.now(),
                encryptionContext: context(length), keyCheck: KeyCheck(for: dataKey.plaintext), rotationPeriodDays: nil,
                cipher: CipherSettings(
                    pageSize: 4096, sqlcipherVersion: String(repeating: "9", count: 64),
                    salt: Array(repeating: 0, count: 16)))
            keyFile.mac = Array(repeating: 0, count: 32)
            return keyFile
        }
        let length = try #require(
            try (500...1024).first { length in
                try record(length).jsonData().count <= KeyFile.maximumSize
                    && record(length).sizeWithKeyChangePending() > KeyFile.maximumSize
            })
        let nearly = DatabaseKeyManager(
            databasePath: directory.file("n.db"), kms: kms,
            configuration: .init(kekId: "k", encryptionContext: context(length)), logger: silentLogger)
        await expectError(.invalidConfiguration, containing: ["while a key change is pending"]) {
            try await nearly.initialize()
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
        // dbkey refuses the same up front, with exit 42.
        let workspace = try DBKeyCLITests.Workspace()
        let cli = try await workspace.dbkey(
            "init", workspace.database, "--context", "k=" + String(repeating: "x", count: 66_000))
        #expect(cli.status == 42, "\(cli.stderr)")
        #expect(!FileManager.default.fileExists(atPath: workspace.database))
    }
}
