import Foundation
import Logging
public import SQLCipherKeyManager
import Testing

/// The behaviour every ``KeyManagementService`` must have, as checks a provider's own tests
/// run with one call — the same checks every provider in DBKey passes.
///
/// Call it from a Swift Testing test; each failed check is recorded as an issue of that test:
///
/// ```swift
/// @Test func myProviderConforms() async throws {
///     try await KmsConformanceSuite(kekId: "my-key") { MyKms() }.run()
/// }
/// ```
///
/// The checks: a generated key is 32 bytes and unwraps to itself under the resolved KEK id;
/// keys and wraps are fresh; encrypt then decrypt returns the key; another encryption context
/// and any altered byte of the wrapped key are refused as
/// ``DBKeyError/Code-swift.struct/ciphertextInvalid``; health answers with the resolved KEK id;
/// the provider id is a valid `.key` value; and a database goes through its whole life — create,
/// write, rotate, rewrap, reopen — with the provider registered in a ``DatabaseKeyManager``.
public struct KmsConformanceSuite: Sendable {
    /// The KEK to ask the provider for.
    public let kekId: String
    /// The context the checks bind to wrapped keys.
    public let context: EncryptionContext
    private let makeProvider: @Sendable () throws -> any KeyManagementService

    /// Creates the suite for a provider.
    ///
    /// - Parameters:
    ///   - kekId: A KEK the provider can use, as a user would name it.
    ///   - context: The encryption context to bind; a two-pair one by default.
    ///   - makeProvider: Makes the provider under test (called once per check).
    public init(
        kekId: String,
        context: EncryptionContext = ["purpose": "conformance", "tenant": "t-1"],
        makeProvider: @escaping @Sendable () throws -> any KeyManagementService
    ) {
        self.kekId = kekId
        self.context = context
        self.makeProvider = makeProvider
    }

    /// Runs every check.
    ///
    /// - Throws: What the provider throws where a check expects success.
    public func run() async throws {
        try await generateThenDecrypt()
        try await freshness()
        try await encryptThenDecrypt()
        try await contextEnforced()
        try await tamperDetected()
        try await health()
        try providerName()
        try await databaseLifecycle()
    }

    /// A generated key is 32 bytes and decrypts to itself under its resolved KEK id.
    public func generateThenDecrypt() async throws {
        let kms = try makeProvider()
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(dataKey.plaintext.count == 32)
        #expect(!dataKey.kekId.isEmpty)
        #expect(!dataKey.wrapped.encoded.isEmpty)
        let unwrapped = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: context)
        #expect(unwrapped == dataKey.plaintext)
    }

    /// Two generated keys differ, and so do two wraps of the same key.
    public func freshness() async throws {
        let kms = try makeProvider()
        let first = try await kms.generateDataKey(kekId: kekId, context: context)
        let second = try await kms.generateDataKey(kekId: kekId, context: context)
        #expect(first.plaintext != second.plaintext)
        let rewrapped = try await kms.encrypt(first.plaintext, kekId: first.kekId, context: context)
        #expect(rewrapped != first.wrapped)
    }

    /// Encrypt then decrypt returns the key.
    public func encryptThenDecrypt() async throws {
        let kms = try makeProvider()
        let key = try SecureBuffer.random(count: 32)
        let resolved = try await kms.generateDataKey(kekId: kekId, context: context).kekId
        let wrapped = try await kms.encrypt(key, kekId: resolved, context: context)
        #expect(try await kms.decrypt(wrapped, kekId: resolved, context: context) == key)
    }

    /// A different encryption context is refused as invalid ciphertext.
    public func contextEnforced() async throws {
        let kms = try makeProvider()
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        var others: [EncryptionContext] = [.empty]
        if let (name, value) = context.dictionary.sorted(by: { $0.key < $1.key }).first {
            var changed = context.dictionary
            changed[name] = value + "-other"
            others.append(EncryptionContext(changed))
            if context.dictionary.count > 1 {
                others.append(EncryptionContext([name: value]))
            }
        }
        for other in others {
            await expectCode(.ciphertextInvalid, "decrypting under another context") {
                _ = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: other)
            }
        }
    }

    /// Any altered byte of the wrapped key's middle or end is refused as invalid ciphertext,
    /// and so is text that is not a wrapped key at all.
    public func tamperDetected() async throws {
        let kms = try makeProvider()
        let dataKey = try await kms.generateDataKey(kekId: kekId, context: context)
        // The base64 part: all of it, or what follows a prefix such as Transit's `vault:vN:`.
        let encoded = dataKey.wrapped.encoded
        let prefix = encoded.lastIndex(of: ":").map { String(encoded[...$0]) } ?? ""
        let bytes = try #require(WrappedDataKey(encoded: String(encoded.dropFirst(prefix.count))).base64DecodedBytes)
        // The middle and the end: ciphertext and tag in every format (a format may start with
        // a key id in clear, where a change names another key).
        for index in [bytes.count / 2, bytes.count - 1] {
            var altered = bytes
            altered[index] ^= 0x01
            let tampered = WrappedDataKey(encoded: prefix + Data(altered).base64EncodedString())
            await expectCode(.ciphertextInvalid, "decrypting a wrapped key altered at byte \(index)") {
                _ = try await kms.decrypt(tampered, kekId: dataKey.kekId, context: context)
            }
        }
        await expectCode(.ciphertextInvalid, "decrypting text that is not base64") {
            _ = try await kms.decrypt(WrappedDataKey(encoded: "not base64!"), kekId: dataKey.kekId, context: context)
        }
    }

    /// Health answers with the resolved KEK id.
    public func health() async throws {
        let kms = try makeProvider()
        let resolved = try await kms.generateDataKey(kekId: kekId, context: context).kekId
        let health = try await kms.health(kekId: resolved)
        #expect(health.kekId == resolved)
        #expect(health.latency >= .zero)
        #expect(!health.keyState.isEmpty)
    }

    /// The provider id can be recorded in a `.key` file and found in a registry.
    public func providerName() throws {
        let kms = try makeProvider()
        let name = kms.providerName
        #expect(
            !name.isEmpty
                && name.unicodeScalars.allSatisfy {
                    $0.isASCII && $0.properties.isAlphabetic || "-_0123456789".unicodeScalars.contains($0)
                }, "provider id \"\(name)\": use ASCII letters, digits, - and _")
        #expect(try KmsRegistry(kms).provider(named: name).providerName == name)
        #expect(try makeProvider().providerName == name, "the id must not change between instances")
    }

    /// A database created, written, rotated, rewrapped under the same KEK and reopened, with the
    /// provider registered in a manager; every row survives.
    public func databaseLifecycle() async throws {
        let kms = try makeProvider()
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("dbkey-conformance-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logger = Logger(label: "dbkey.conformance") { _ in SwiftLogNoOpLogHandler() }
        let manager = DatabaseKeyManager(
            databasePath: directory + "/conformance.db",
            providers: KmsRegistry(kms),
            configuration: .init(kekId: kekId, kekProvider: kms.providerName, encryptionContext: context),
            logger: logger
        )
        let created = try await manager.initialize()
        #expect(created.kms == kms.providerName)
        do {
            let db = try await manager.open()
            try db.execute("CREATE TABLE t(x)")
            try db.execute("INSERT INTO t VALUES (1), (2), (3)")
        }
        let rotated = try await manager.rotateKey()
        #expect(rotated.version == 2)
        let rewrapped = try await manager.rewrap(to: kms, kekId: rotated.kekId)
        #expect(rewrapped.version == 2 && rewrapped.encryptedDek != rotated.encryptedDek)
        let db = try await manager.open()
        #expect(try db.fetchAll("SELECT count(*) FROM t").first?[0].integerValue == 3)
    }

    private func expectCode(
        _ code: DBKeyError.Code,
        _ what: String,
        _ body: () async throws -> Void
    ) async {
        do {
            try await body()
            Issue.record("\(what): expected \(code), but it succeeded")
        } catch let error as DBKeyError {
            #expect(error.code == code, "\(what): \(error)")
        } catch {
            Issue.record("\(what): expected DBKeyError \(code), got \(error)")
        }
    }
}
