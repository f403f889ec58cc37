import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// Key slots: which slot opens when, what a rotation does to them, escrow and recovery.
@Suite("Key slots and recovery", .tags(.core))
struct KeySlotTests {
    /// A database under a `mock` primary with a `backup` provider's slot, both registered.
    struct SlottedDatabase {
        let directory: TemporaryDirectory
        let path: String
        let primary = MockKms(seed: 1, providerName: "mock")
        let backup = MockKms(seed: 2, providerName: "backup")
        let sink = RecordingAuditSink()

        init(rows: Int = 50) async throws {
            directory = try TemporaryDirectory()
            path = directory.file("app.db")
            let manager = self.manager()
            try await manager.initialize()
            let db = try await manager.open()
            try db.execute("CREATE TABLE t(x)")
            for row in 0..<rows { try db.execute("INSERT INTO t VALUES (?)", arguments: [.integer(Int64(row))]) }
            db.close()
            try await manager.addSlot(backup, kekId: "backup-kek")
        }

        func manager(fallback: SlotFallback = .whenUnavailable) -> DatabaseKeyManager {
            DatabaseKeyManager(
                databasePath: path, providers: KmsRegistry(providers: [primary, backup]),
                configuration: .init(
                    kekId: "primary-kek", kekProvider: "mock", keyCacheTTL: .zero, auditSink: sink,
                    slotFallback: fallback),
                logger: silentLogger)
        }

        func rowCount(_ manager: DatabaseKeyManager? = nil) async throws -> Int64? {
            let db = try await (manager ?? self.manager()).open()
            defer { db.close() }
            guard case .integer(let count) = try db.fetchAll("SELECT count(*) FROM t").first?[0] else { return nil }
            return count
        }
    }

    @Test("the primary's KMS unavailable: the database opens through another provider's slot, an audit event")
    func outageOpensThroughSlot() async throws {
        let database = try await SlottedDatabase()
        database.primary.failNext(1, [.decrypt])
        #expect(try await database.rowCount() == 50)
        let used = database.sink.events.filter { $0.kind == .slotUsed }
        #expect(used.count == 1)
        #expect(used.first?.provider == "backup" && used.first?.kekId == "mock:backup-kek")
        #expect(used.first?.detail == "slot 1 opened the current key")
        // With the primary back, the primary opens it again, and no slot event is added.
        #expect(try await database.rowCount() == 50)
        #expect(database.sink.events.filter { $0.kind == .slotUsed }.count == 1)
    }

    @Test(
        "the primary refuses (denied, disabled, not found): revocation holds, the error names the slots; the opt-in opens",
        arguments: [DBKeyError.Code.kmsAccessDenied, .kmsKeyDisabled, .kmsKeyNotFound])
    func refusalHolds(code: DBKeyError.Code) async throws {
        let database = try await SlottedDatabase()
        database.backup.resetCalls()
        database.primary.failNext(1, [.decrypt], with: DBKeyError(code, "MockKms: refused."))
        await expectError(code, containing: ["other slots: 1 (backup mock:backup-kek)", "dbkey recover"]) {
            _ = try await database.manager().open()
        }
        #expect(database.backup.calls(of: .decrypt).isEmpty, "a refusal must not reach another slot")
        database.primary.failNext(1, [.decrypt], with: DBKeyError(code, "MockKms: refused."))
        #expect(try await database.rowCount(database.manager(fallback: .whenUnavailableOrRefused)) == 50)
        #expect(database.sink.events.contains { $0.kind == .slotUsed })
    }

    @Test("an altered slot is ciphertext-invalid and is not skipped over to the next slot")
    func tamperedSlotNotSkipped() async throws {
        let database = try await SlottedDatabase()
        let third = MockKms(seed: 3, providerName: "third")
        let manager = DatabaseKeyManager(
            databasePath: database.path, providers: KmsRegistry(providers: [database.primary, database.backup, third]),
            configuration: .init(kekId: "primary-kek", kekProvider: "mock", keyCacheTTL: .zero), logger: silentLogger)
        try await manager.addSlot(third, kekId: "third-kek")
        // Flip one byte of slot 1's wrapped key.
        var object = try #require(
            try JSONSerialization.jsonObject(with: contents(database.path + ".key")) as? [String: Any])
        var slots = try #require(object["slots"] as? [[String: Any]])
        let encoded = try #require(slots[0]["encrypted_dek"] as? String)
        var wrapped = try #require(Data(base64Encoded: encoded))
        wrapped[20] ^= 0x01
        slots[0]["encrypted_dek"] = wrapped.base64EncodedString()
        object["slots"] = slots
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: database.path + ".key"))
        database.primary.failNext(1, [.decrypt])
        third.resetCalls()
        await expectError(.ciphertextInvalid) { _ = try await manager.open() }
        #expect(third.calls(of: .decrypt).isEmpty, "slot 2 was tried after slot 1 failed authentication")
    }

    @Test("a slot added to the file by hand, without the MAC, is refused; so are slots in a format 3 file")
    func handAddedSlotRefused() async throws {
        let database = try await SlottedDatabase()
        try await database.manager().removeSlot(1)
        let sealed = try contents(database.path + ".key")
        // The slot, as the manager wrote it, taken back from a copy of the slotted file.
        let other = try await SlottedDatabase()
        let slotted = try #require(
            try JSONSerialization.jsonObject(with: contents(other.path + ".key")) as? [String: Any])
        var object = try #require(try JSONSerialization.jsonObject(with: sealed) as? [String: Any])
        object["slots"] = slotted["slots"]
        object["format"] = 4
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: database.path + ".key"))
        await expectError(.keyFileCorrupt, containing: ["MAC"]) { _ = try await database.manager().open() }
        object["format"] = 3
        try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: database.path + ".key"))
        await expectError(.keyFileCorrupt, containing: ["\"slots\" needs a format 4 file"]) {
            _ = try database.manager().load()
        }
    }

    @Test(
        "a rotation puts the new key under every slot, in its journal; a slot's outage stops it before anything changes"
    )
    func rotationCarriesSlots() async throws {
        let database = try await SlottedDatabase()
        let escrow = try EscrowPrivateKey.generate()
        try await database.manager().addEscrowSlot(escrow.publicKey)
        let before = try contents(database.path + ".key")
        database.backup.failNext(1, [.encrypt])
        await expectError(
            .kmsUnavailable, containing: ["Key slot 1 (backup mock:backup-kek)", "--drop-unreachable-slots"]
        ) {
            try await database.manager().rotateKey()
        }
        #expect(try contents(database.path + ".key") == before, "the .key changed")
        let oldSeal = try database.manager().load().slots[1].encryptedDek
        let rotated = try await database.manager().rotateKey()
        #expect(rotated.version == 2 && rotated.slots.count == 2)
        // Each slot gives the new key on its own.
        let newKey = try await database.manager().dataKey()
        database.primary.failNext(1, [.decrypt])
        #expect(try await database.rowCount() == 50)
        #expect(try await database.manager().restricted(to: .escrow(escrow)).rowCount(of: "t") == 50)
        // The escrow slot was re-sealed: the old seal does not open for the new version, and
        // for its own version gives the old key, which no longer opens the database.
        #expect(rotated.slots[1].encryptedDek != oldSeal)
        let salt = try #require(rotated.cipher.salt)
        #expect(throws: DBKeyError.self) {
            _ = try EscrowSeal.open(oldSeal, with: escrow, context: .empty, salt: salt, version: 2)
        }
        let oldKey = try EscrowSeal.open(oldSeal, with: escrow, context: .empty, salt: salt, version: 1)
        #expect(oldKey != newKey)
        #expect(try await !sqlcipherShellOpensDatabase(database.path, key: oldKey, cipher: rotated.cipher))
        #expect(try await sqlcipherShellOpensDatabase(database.path, key: newKey, cipher: rotated.cipher))
    }

    @Test("--drop-unreachable-slots leaves out a slot whose KMS is down, with an audit event")
    func dropUnreachable() async throws {
        let database = try await SlottedDatabase()
        database.backup.failNext(1, [.encrypt])
        let rotated = try await database.manager().rotateKey(dropUnreachableSlots: true)
        #expect(rotated.version == 2 && rotated.slots.isEmpty)
        let removed = database.sink.events.filter { $0.kind == .slotRemoved }
        #expect(removed.map(\.detail) == ["slot 1: its provider could not take the new key"])
        #expect(try await database.rowCount() == 50)
    }

    @Test("an interrupted rotation settles through a slot: the pending record carries the new key under it")
    func settlesThroughSlot() async throws {
        let database = try await SlottedDatabase()
        let failing = DatabaseKeyManager(
            databasePath: database.path, providers: KmsRegistry(providers: [database.primary, database.backup]),
            configuration: .init(kekId: "primary-kek", kekProvider: "mock", keyCacheTTL: .zero),
            logger: silentLogger, faultInjector: InjectedFault(step: .writingFinalKeyFile).injector)
        await expectError(.io) { try await failing.rotateKey() }
        #expect(try database.manager().load().pending?.slots.count == 1)
        // Only the backup slot answers: it opens the current key and the pending one.
        database.primary.failNext(2, [.decrypt])
        #expect(try await database.rowCount() == 50)
        let settled = try database.manager().load()
        #expect(settled.pending == nil && settled.version == 2)
        #expect(database.sink.events.filter { $0.kind == .slotUsed }.count >= 1)
    }

    @Test("recover: the primary's master key lost, a second master key's slot or the escrow key brings it back")
    func recoverAfterMasterKeyLoss() async throws {
        let first = try SecureBuffer.random(count: 32)
        let second = try SecureBuffer.random(count: 32)
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db")
        let both = try LocalKms(masterKey: first, otherMasterKeys: [second])
        let manager = DatabaseKeyManager(databasePath: path, kms: both, logger: silentLogger)
        try await manager.initialize()
        let db = try await manager.open()
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3)")
        db.close()
        try await manager.addSlot(try LocalKms(masterKey: second), kekId: LocalKms.defaultKekName)
        let escrow = try EscrowPrivateKey.generate()
        try await manager.addEscrowSlot(escrow.publicKey)
        try await manager.rotateKey()

        // The first master key is gone: its slot answers "not found", and nothing opens.
        let onlySecond = DatabaseKeyManager(
            databasePath: path, kms: try LocalKms(masterKey: second), logger: silentLogger)
        await expectError(.kmsKeyNotFound, containing: ["other slots"]) { _ = try await onlySecond.open() }
        let third = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
        let sink = RecordingAuditSink()
        let recovering = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(providers: [try LocalKms(masterKey: second)]),
            configuration: .init(auditSink: sink), logger: silentLogger)
        let recovered = try await recovering.recover(through: .slot(1), to: third, kekId: "default")
        #expect(recovered.kekId == third.kekId && recovered.version == 2)
        #expect(sink.events.contains { $0.kind == .keyRecovered && $0.detail?.contains("through slot 1") == true })
        let underThird = DatabaseKeyManager(databasePath: path, kms: third, logger: silentLogger)
        #expect(try await underThird.rowCount(of: "t") == 3)

        // And from the escrow key alone, with no provider that knows any old KEK.
        let fourth = try LocalKms(masterKey: try SecureBuffer.random(count: 32))
        let escrowOnly = DatabaseKeyManager(databasePath: path, kms: fourth, logger: silentLogger)
        try await escrowOnly.recover(through: .escrow(escrow), to: fourth, kekId: "default")
        #expect(try await escrowOnly.rowCount(of: "t") == 3)
        // Another escrow key opens nothing.
        await expectError(.kmsKeyNotFound, containing: ["No escrow slot"]) {
            try await escrowOnly.recover(
                through: .escrow(try EscrowPrivateKey.generate()), to: fourth, kekId: "default")
        }
    }

    @Test(
        "slot remove keeps old .key copies working; slot remove --rotate makes them useless; the last working slot stays"
    )
    func removeSlot() async throws {
        let database = try await SlottedDatabase()
        let oldCopy = try contents(database.path + ".key")
        let oldBackupWrap = try database.manager().load().slots[0].encryptedDek
        // The primary cannot go while the only other provider's slot does not answer.
        database.backup.failNext(1, [.decrypt])
        await expectError(.invalidConfiguration, containing: ["without a slot that works"]) {
            try await database.manager().removeSlot(0)
        }
        database.backup.resetCalls()
        try await database.manager().removeSlot(1)
        #expect(try database.manager().load().slots.isEmpty)
        // Nor can it go when only an escrow slot is left.
        try await database.manager().addEscrowSlot(try EscrowPrivateKey.generate().publicKey)
        await expectError(.invalidConfiguration, containing: ["can only be removed when another provider's slot"]) {
            try await database.manager().removeSlot(0)
        }
        // Without rotating, a copy of the .key from before still opens through the removed slot.
        let copyPath = database.directory.file("copy.db")
        try FileManager.default.copyItem(atPath: database.path, toPath: copyPath)
        try oldCopy.write(to: URL(fileURLWithPath: copyPath + ".key"))
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: copyPath + ".key")
        let copyManager = DatabaseKeyManager(
            databasePath: copyPath, providers: KmsRegistry(providers: [database.primary, database.backup]),
            configuration: .init(keyCacheTTL: .zero), logger: silentLogger)
        database.primary.failNext(1, [.decrypt])
        #expect(try await copyManager.rowCount(of: "t") == 50)
        // With --rotate the removed slot's key opens nothing any more.
        try await database.manager().addSlot(database.backup, kekId: "backup-kek")
        let withSlot = try database.manager().load()
        let removed = try await database.manager().removeSlot(withSlot.slots[1].number, rotate: true)
        #expect(removed.version == 2 && removed.slots.map(\.number) == [withSlot.slots[0].number])
        let oldKey = try await database.backup.decrypt(oldBackupWrap, kekId: "backup-kek", context: .empty)
        #expect(try await !sqlcipherShellOpensDatabase(database.path, key: oldKey, cipher: removed.cipher))
        #expect(try await database.rowCount() == 50)
        #expect(database.sink.events.filter { $0.kind == .slotRemoved }.count == 2)
    }

    @Test(
        "at most seven slots besides the primary; with every slot twice (a change pending) the file stays far under 64 KiB"
    )
    func slotCap() async throws {
        let database = try await SlottedDatabase(rows: 1)
        for index in 2...KeySlot.maximumAdditionalSlots {
            try await database.manager().addSlot(
                MockKms(seed: UInt64(10 + index), providerName: "p\(index)"), kekId: "k")
        }
        await expectError(.invalidConfiguration, containing: ["already has 7 slots", "the most"]) {
            try await database.manager().addEscrowSlot(try EscrowPrivateKey.generate().publicKey)
        }
        // The longest ids the package's providers write: an AWS key ARN, a PKCS#11 URI, a
        // wrapped key of AWS's size (CiphertextBlob of ~184 bytes).
        var keyFile = try database.manager().load()
        keyFile.kekId = "arn:aws:kms:ap-southeast-2:123456789012:key/" + String(repeating: "f", count: 100)
        keyFile.slots = keyFile.slots.map { slot in
            var slot = slot
            slot.kekId =
                "pkcs11:token=" + String(repeating: "t", count: 200) + ";object=" + String(repeating: "o", count: 200)
            slot.encryptedDek = WrappedDataKey(encoded: String(repeating: "A", count: 400))
            return slot
        }
        let size = try keyFile.sizeWithKeyChangePending()
        print("a .key with 8 slots of long ids, a key change pending: \(size) bytes")
        #expect(size < KeyFile.maximumSize / 2)
    }

    @Test("the escrow seal is bound to its context, salt, version and key")
    func sealBinding() throws {
        let escrow = try EscrowPrivateKey.generate()
        let key = try SecureBuffer.random(count: 32)
        let salt = Array(repeating: UInt8(7), count: 16)
        let sealed = try EscrowSeal.seal(key, to: escrow.publicKey, context: ["a": "b"], salt: salt, version: 3)
        #expect(try EscrowSeal.open(sealed, with: escrow, context: ["a": "b"], salt: salt, version: 3) == key)
        for (context, salt2, version) in [
            (EncryptionContext(["a": "c"]), salt, 3), (["a": "b"], Array(repeating: UInt8(8), count: 16), 3),
            (["a": "b"], salt, 4),
        ] {
            #expect(throws: DBKeyError.self) {
                _ = try EscrowSeal.open(sealed, with: escrow, context: context, salt: salt2, version: version)
            }
        }
        #expect(throws: DBKeyError.self) {
            _ = try EscrowSeal.open(
                sealed, with: try EscrowPrivateKey.generate(), context: ["a": "b"], salt: salt, version: 3)
        }
    }

    @Test(
        "recovery codes: round trip, and every single mistyped symbol and swap of neighbours is caught, its group named"
    )
    func recoveryCodes() throws {
        for _ in 0..<20 {
            let escrow = try EscrowPrivateKey.generate()
            let code = String(decoding: escrow.recoveryCode.withUnsafeBytes { Array($0) }, as: UTF8.self)
            let back = try EscrowPrivateKey(
                recoveryCode: buffer(code.lowercased().replacingOccurrences(of: "-", with: " ")))
            #expect(back.publicKey == escrow.publicKey)
            let symbols = Array(code.utf8)
            let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U".utf8)
            for position in symbols.indices where symbols[position] != UInt8(ascii: "-") {
                let group = position / 6 + 1
                for replacement in alphabet where replacement != symbols[position] {
                    var typo = symbols
                    typo[position] = replacement
                    #expect(throws: DBKeyError.self) { _ = try EscrowPrivateKey(recoveryCode: buffer(typo)) }
                }
                let next = position + 1
                if next < symbols.count, symbols[next] != UInt8(ascii: "-"), symbols[next] != symbols[position] {
                    var swapped = symbols
                    swapped.swapAt(position, next)
                    do {
                        _ = try EscrowPrivateKey(recoveryCode: buffer(swapped))
                        Issue.record("a swap at \(position) was not caught")
                    } catch let error as DBKeyError {
                        #expect(error.message.contains("Group \(group) ") && !error.message.contains(code))
                    }
                }
            }
        }
    }

    func buffer(_ text: String) -> SecureBuffer { buffer(Array(text.utf8)) }
    func buffer(_ bytes: [UInt8]) -> SecureBuffer { bytes.withUnsafeBytes { SecureBuffer(copying: $0) } }
}

extension DatabaseKeyManager {
    /// `count(*)` of `table`, through a connection this manager opens (tests only).
    func rowCount(of table: String) async throws -> Int64? {
        let db = try await open()
        defer { db.close() }
        guard case .integer(let count) = try db.fetchAll("SELECT count(*) FROM \(table)").first?[0] else { return nil }
        return count
    }
}

/// Whether the `sqlcipher` shell opens `path` with `key` and the `.key`'s settings.
func sqlcipherShellOpensDatabase(_ path: String, key: SecureBuffer, cipher: CipherSettings) async throws -> Bool {
    let sqlcipher = try requireTool("sqlcipher", installedBy: "Scripts/setup")
    // SQLCipher 3.x has no cipher_compatibility: its defaults are the 3 format.
    let compatibility =
        try SQLCipherEngine.linked().majorVersion >= 4
        ? "PRAGMA cipher_compatibility = \(cipher.format);\n" : ""
    let script =
        "PRAGMA key = \"x'\(hex(key))'\";\n\(compatibility)PRAGMA cipher_page_size = \(cipher.pageSize);\nSELECT count(*) FROM sqlite_master;\n"
    let result = try await run(sqlcipher, [path], input: script)
    let last = result.stdout.split(separator: "\n").last.map(String.init) ?? ""
    return result.status == 0 && !result.stderr.contains("not a database") && Int(last) != nil
}
