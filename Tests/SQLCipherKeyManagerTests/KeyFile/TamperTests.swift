import Foundation
import Testing

@testable import SQLCipherKeyManager

/// Each field of a `.key` file changed by hand, and the error that must follow. The file is
/// left as the tamperer wrote it.
@Suite("Tampered .key files", .tags(.core))
struct TamperTests {
    enum Tamper: String, CaseIterable, Sendable {
        case encryptedDek, kekId, encryptionContext, keyCheck, version, createdAt, rotationPeriod, pageSize
        case pendingVersion, pendingEncryptedDek, pendingKeyCheck, mac

        var expected: DBKeyError.Code {
            switch self {
            case .encryptedDek, .encryptionContext: .ciphertextInvalid
            case .kekId: .kmsKeyNotFound
            case .keyCheck: .wrongKey
            case .version, .createdAt, .rotationPeriod, .pageSize, .pendingVersion, .pendingEncryptedDek,
                .pendingKeyCheck, .mac:
                .keyFileCorrupt
            }
        }

        /// The error for a manager that opened the database before the change, its data key
        /// still cached (the cache is keyed by the wrapped key and the version): the MAC check,
        /// for every field but the wrapped key.
        var expectedWhenWarm: DBKeyError.Code {
            self == .encryptedDek ? .ciphertextInvalid : .keyFileCorrupt
        }

        var involvesPending: Bool { rawValue.hasPrefix("pending") }

        /// Changes one character (or one bit of the decoded bytes) of the field.
        func apply(to object: inout [String: Any]) {
            func flipBase64(_ text: String) -> String {
                var bytes = Array(Data(base64Encoded: text)!)
                bytes[bytes.count / 2] ^= 0x01
                return Data(bytes).base64EncodedString()
            }
            func replaceLastCharacter(_ text: String) -> String {
                String(text.dropLast()) + (text.last == "0" ? "1" : "0")
            }
            var pending = object["pending"] as? [String: Any] ?? [:]
            switch self {
            case .encryptedDek: object["encrypted_dek"] = flipBase64(object["encrypted_dek"] as! String)
            case .kekId: object["kek_id"] = replaceLastCharacter(object["kek_id"] as! String)
            case .encryptionContext: object["encryption_context"] = ["purpose": "tampereD"]
            case .keyCheck: object["key_check"] = flipBase64(object["key_check"] as! String)
            case .version: object["version"] = (object["version"] as! Int) + 1
            case .createdAt: object["created_at"] = "2020-01-01T00:00:00Z"
            case .rotationPeriod: object["rotation_period_days"] = 36_500
            case .pageSize:
                object["cipher"] = ["page_size": 1024, "salt": (object["cipher"] as! [String: Any])["salt"]!]
            case .pendingVersion: pending["version"] = (pending["version"] as! Int) + 5
            case .pendingEncryptedDek: pending["encrypted_dek"] = flipBase64(pending["encrypted_dek"] as! String)
            case .pendingKeyCheck: pending["key_check"] = flipBase64(pending["key_check"] as! String)
            case .mac: object["mac"] = flipBase64(object["mac"] as! String)
            }
            if involvesPending {
                object["pending"] = pending
            }
        }
    }

    @Test(
        "each tampered field is refused with its own error, by a new manager and by one that opened the database before (its key, parse and MAC check cached), and the files stay as they were",
        arguments: Tamper.allCases
    )
    func refused(tamper: Tamper) async throws {
        let database = try await TestDatabase(rows: 5, context: ["purpose": "tamper"])
        let manager = database.manager()
        // Opened twice: the second open is the warm one, served from every cache.
        try await manager.open().close()
        try await manager.open().close()
        if tamper.involvesPending {
            // A journaled rotation, as a crash would leave it.
            let keyFile = try manager.load()
            let newKey = try await database.kms.generateDataKey(
                kekId: keyFile.kekId, context: keyFile.encryptionContext)
            var journal = keyFile
            journal.pending = PendingOperation(
                operation: .rotate, encryptedDek: newKey.wrapped, kekId: newKey.kekId, kms: "local", version: 2,
                keyCheck: KeyCheck(for: newKey.plaintext), startedAt: KeyFile.now())
            try await manager.database.keyStore.write(journal, sealedWith: try await database.currentKey())
        }
        var object = try #require(
            try JSONSerialization.jsonObject(with: try contents(manager.keyFilePath)) as? [String: Any])
        tamper.apply(to: &object)
        try JSONSerialization.data(withJSONObject: object).withUnsafeBytes {
            try ProtectedFile.writeAtomically($0, to: manager.keyFilePath)
        }
        let keyBytes = try contents(manager.keyFilePath)
        let databaseBytes = try contents(database.path)
        // A fresh manager: no key cached.
        await expectError(tamper.expected) { _ = try await database.manager().open() }
        await expectError(tamper.involvesPending ? tamper.expected : tamper.expectedWhenWarm) {
            _ = try await manager.open()
        }
        #expect(try contents(manager.keyFilePath) == keyBytes)
        #expect(try contents(database.path) == databaseBytes)
    }
}

extension TamperTests {
    @Test(
        "a sealed .key downgraded to the seven-field form: every key change refuses to seal the settings it implies, nothing is written"
    )
    func downgradedToLegacyForm() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db")
        let manager = DatabaseKeyManager(
            databasePath: path, kms: try localKms(), configuration: .init(keyCacheTTL: .zero), logger: silentLogger)
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        db.close()
        let sealed = try #require(try JSONSerialization.jsonObject(with: contents(path + ".key")) as? [String: Any])
        // What an attacker holding the .key writes: the seven fields, no MAC, no cipher settings.
        var legacy: [String: Any] = [:]
        for field in [
            "encrypted_dek", "kek_id", "version", "created_at", "rotated_at", "encryption_context", "dek_spec",
        ] {
            legacy[field] = sealed[field] ?? NSNull()
        }
        try JSONSerialization.data(withJSONObject: legacy).write(to: URL(fileURLWithPath: path + ".key"))
        #expect(chmod(path + ".key", 0o600) == 0)
        let keyBefore = try contents(path + ".key")
        let databaseBefore = try contents(path)
        let other = try localKms(masterKeyBase64: Data(repeating: 9, count: 32).base64EncodedString())
        await expectError(.keyFileCorrupt, containing: ["unsealed", "do not authenticate"]) {
            _ = try await manager.rewrap(to: other, kekId: "default")
        }
        // Those that open the database first are refused by that open (the implied settings do
        // not read it), before anything is written.
        for change in [
            { _ = try await manager.addEscrowSlot(try EscrowPrivateKey.generate().publicKey) },
            { _ = try await manager.rotateKey() },
        ] as [@Sendable () async throws -> Void] {
            do {
                try await change()
                Issue.record("a key change of the downgraded .key succeeded")
            } catch let error as DBKeyError {
                #expect([.keyFileCorrupt, .wrongKey].contains(error.code), "\(error)")
            }
        }
        #expect(try contents(path + ".key") == keyBefore, "a key change wrote the downgraded settings")
        #expect(try contents(path) == databaseBefore)
        // Nor does an open read the database with the settings it implies.
        await #expect(throws: DBKeyError.self) { _ = try await manager.open() }
    }
}
