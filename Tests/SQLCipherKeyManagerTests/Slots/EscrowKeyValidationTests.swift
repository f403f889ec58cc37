import Crypto
import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// Escrow public keys and encapsulated keys of small order (RFC 7748 §6.1, RFC 9180 §7.1.4):
/// refused wherever DBKey seals or opens, tolerated (and reported, then dropped) where a `.key`
/// already holds one.
@Suite("Escrow key validation", .tags(.core))
struct EscrowKeyValidationTests {
    typealias Workspace = DBKeyCLITests.Workspace

    /// The little-endian u-coordinates of small order below 2^255: 0, 1, the two points of order
    /// 8 (as libsodium's blocklist and RFC 7748's errata list them), p − 1, and the
    /// non-canonical p and p + 1.
    static let smallOrderU: [String] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ]

    /// The 14 encodings: each u with bit 255 clear and set.
    static let smallOrderEncodings: [[UInt8]] = smallOrderU.flatMap { text -> [[UInt8]] in
        let bytes = stride(from: 0, to: text.count, by: 2).map { offset in
            UInt8(text.dropFirst(offset).prefix(2), radix: 16)!
        }
        var high = bytes
        high[31] |= 0x80
        return [bytes, high]
    }

    /// The little-endian encoding of `value` (below 2^64) plus `p` when `overP`.
    static func encoding(_ value: UInt64, overP: Bool = false) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 32)
        withUnsafeBytes(of: value.littleEndian) { for (index, byte) in $0.enumerated() { bytes[index] = byte } }
        guard overP else { return bytes }
        // p = 2^255 − 19: add value to it (value < 2^64 − 19 never carries past byte 8).
        var p = [UInt8](repeating: 0xFF, count: 32)
        p[0] = 0xED
        p[31] = 0x7F
        var carry = 0
        for index in 0..<32 {
            let sum = Int(p[index]) + Int(bytes[index]) + carry
            bytes[index] = UInt8(sum & 0xFF)
            carry = sum >> 8
        }
        return bytes
    }

    func pemFile(_ raw: [UInt8], in workspace: Workspace, _ name: String) throws -> String {
        let path = workspace.directory.file(name)
        let pem = try EscrowPublicKey(storedRawRepresentation: raw).pemRepresentation
        try Data(pem.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test("exactly the 14 small-order encodings are caught: not 2…18, not p+2…p+18, no generated key")
    func smallOrderSetIsExact() throws {
        #expect(Set(Self.smallOrderEncodings).count == 14)
        for raw in Self.smallOrderEncodings {
            #expect(X25519Validation.hasSmallOrder(raw), "\(raw) not caught")
            #expect(EscrowPublicKey.storedIsSmallOrder(raw))
            #expect(throws: DBKeyError.self) { _ = try EscrowPublicKey(rawRepresentation: raw) }
        }
        // The non-canonical encodings p + k are k: only k = 0 and 1 are small.
        for k in UInt64(2)...18 {
            #expect(!X25519Validation.hasSmallOrder(Self.encoding(k)), "u = \(k)")
            #expect(!X25519Validation.hasSmallOrder(Self.encoding(k, overP: true)), "u = p + \(k)")
        }
        #expect(Self.encoding(0, overP: true) == Self.smallOrderEncodings[10])
        #expect(Self.encoding(1, overP: true) == Self.smallOrderEncodings[12])
        // Real keys, and random 32-byte strings (points on the curve or its twist), pass.
        for _ in 0..<200 {
            let key = try EscrowPrivateKey.generate().publicKey
            #expect(!key.hasSmallOrder)
            let random = (0..<32).map { _ in UInt8.random(in: 0...255) }
            #expect(!X25519Validation.hasSmallOrder(random))
        }
        #expect(X25519Validation.hasSmallOrder([UInt8](repeating: 9, count: 31)), "a short key counts as unsafe")
    }

    @Test("sealing to a small-order key is refused; opening a small-order encapsulated key is refused")
    func sealAndOpenRefuse() throws {
        let key = try SecureBuffer.random(count: 32)
        let salt = [UInt8](repeating: 7, count: 16)
        let escrow = try EscrowPrivateKey.generate()
        let sealed = try EscrowSeal.seal(key, to: escrow.publicKey, context: .empty, salt: salt, version: 1)
        let blob = try #require(sealed.base64DecodedBytes)
        for raw in Self.smallOrderEncodings {
            let unsafe = try EscrowPublicKey(storedRawRepresentation: raw)
            #expect(throws: DBKeyError.self) {
                _ = try EscrowSeal.seal(key, to: unsafe, context: .empty, salt: salt, version: 1)
            }
            let forged = WrappedDataKey(encoded: Data(raw + blob.dropFirst(32)).base64EncodedString())
            do {
                _ = try EscrowSeal.open(forged, with: escrow, context: .empty, salt: salt, version: 1)
                Issue.record("a small-order encapsulated key was opened")
            } catch let error as DBKeyError {
                #expect(error.code == .ciphertextInvalid && error.message.contains("small order"), "\(error)")
            }
        }
        #expect(try EscrowSeal.open(sealed, with: escrow, context: .empty, salt: salt, version: 1) == key)
    }

    @Test("init, slot add and backup refuse each of the 14 encodings, with nothing written")
    func entryPointsRefuse() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        #expect(try await workspace.dbkey("sql", database, "CREATE TABLE t(x); INSERT INTO t VALUES (1)").status == 0)
        let keyFile = try contents(database + ".key")
        let fresh = workspace.directory.file("fresh.db")
        let backup = workspace.directory.file("backup.db")
        for (index, raw) in Self.smallOrderEncodings.enumerated() {
            let pem = try pemFile(raw, in: workspace, "unsafe\(index).pem")
            for arguments in [
                ["init", fresh, "--escrow-public-key", pem],
                ["slot", "add", database, "--escrow-public-key", pem],
                ["backup", database, backup, "--escrow-public-key", pem],
            ] {
                let result = try await workspace.dbkey(arguments)
                #expect(
                    result.status == 42 && result.stderr.contains("small order"),
                    "\(arguments[0]) took encoding \(index): \(result.status) \(result.stderr)")
            }
            #expect(try contents(database + ".key") == keyFile, "encoding \(index) changed the .key")
            for path in [fresh, fresh + ".key", backup, backup + ".key", backup + ".dbkey-backup"] {
                #expect(!FileManager.default.fileExists(atPath: path), "\(path) was left by encoding \(index)")
            }
        }
    }

    /// Puts an escrow slot sealed to a small-order key into the workspace database's `.key`, as
    /// an older DBKey would have written it, and returns the slot's number.
    func plantUnsafeSlot(in database: String, raw: [UInt8]) async throws -> Int {
        let manager = DatabaseKeyManager(
            databasePath: database, kms: try localKms(), configuration: .init(keyCacheTTL: .zero),
            logger: silentLogger)
        let dataKey = try await manager.dataKey()
        var keyFile = try manager.load()
        let publicKey = try EscrowPublicKey(storedRawRepresentation: raw)
        // The seal an unchecked HPKE sender makes to it (swift-crypto itself does not refuse).
        var sender = try HPKE.Sender(
            recipientKey: try Curve25519.KeyAgreement.PublicKey(rawRepresentation: raw),
            ciphersuite: EscrowSeal.suite, info: EscrowSeal.info(keyFile.encryptionContext))
        let salt = try keyFile.cipher.salt ?? manager.database.files.readSalt()
        let sealed = try dataKey.withUnsafeBytes {
            try sender.seal($0, authenticating: EscrowSeal.aad(salt: salt, version: keyFile.version))
        }
        let number = keyFile.nextSlotNumber
        keyFile.slots.append(
            KeySlot(
                number: number, kms: KeySlot.escrowProvider, kekId: publicKey.id,
                encryptedDek: WrappedDataKey(
                    encoded: Data(Array(sender.encapsulatedKey) + Array(sealed)).base64EncodedString()),
                escrowPublicKey: publicKey))
        keyFile.format = keyFile.requiredFormat
        try keyFile.sealed(with: dataKey).write(to: database + ".key")
        return number
    }

    @Test("a .key already holding a small-order slot opens; doctor calls it critical; rotate drops it with a warning")
    func existingUnsafeSlot() async throws {
        let workspace = try Workspace()
        let database = workspace.database
        #expect(try await workspace.dbkey("init", database).status == 0)
        #expect(try await workspace.dbkey("sql", database, "CREATE TABLE t(x); INSERT INTO t VALUES (5)").status == 0)
        let safe = workspace.directory.file("safe.pem")
        #expect(try await workspace.dbkey("escrow", "keygen", safe).status == 0)
        #expect(try await workspace.dbkey("slot", "add", database, "--escrow-public-key", safe + ".pub").status == 0)
        let number = try await plantUnsafeSlot(in: database, raw: Self.smallOrderEncodings[5])

        let read = try await workspace.dbkey("sql", database, "SELECT x FROM t")
        #expect(read.status == 0 && read.stdout == "5\n", "\(read.stderr)")
        let doctor = try await workspace.dbkey("doctor", database, "--json")
        #expect(doctor.status != 0)
        #expect(doctor.stdout.contains("escrow-key-unsafe") && doctor.stdout.contains("Critical"), "\(doctor.stdout)")
        #expect(doctor.stdout.contains("slot remove \(database) \(number) --rotate"))

        let rotated = try await workspace.dbkey("rotate", database)
        #expect(rotated.status == 0, "\(rotated.stderr)")
        #expect(rotated.stderr.contains("warning: escrow slot \(number)") && rotated.stderr.contains("small order"))
        let after = try KeyFile.read(from: database + ".key")
        #expect(after.version == 2)
        #expect(after.slots.count == 1 && after.slots.allSatisfy { !$0.isUnsafeEscrow }, "the unsafe slot was kept")
        #expect(try await workspace.dbkey("doctor", database).status == 0)
        #expect(try await workspace.dbkey("sql", database, "SELECT x FROM t").stdout == "5\n")
    }

    @Test("a rotation through the library drops the unsafe slot and records why")
    func rotationAuditsDroppedSlot() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db")
        let sink = RecordingAuditSink()
        let manager = DatabaseKeyManager(
            databasePath: path, kms: try localKms(), configuration: .init(keyCacheTTL: .zero, auditSink: sink),
            logger: silentLogger)
        try await manager.initialize()
        let number = try await plantUnsafeSlot(in: path, raw: Self.smallOrderEncodings[0])
        #expect(try manager.load().slots.contains { $0.isUnsafeEscrow })
        let report = await manager.doctor()
        #expect(report.findings.map(\.check).contains("escrow-key-unsafe"))
        let rotated = try await manager.rotateKey()
        #expect(rotated.slots.isEmpty)
        let removed = sink.events.filter { $0.kind == .slotRemoved }
        #expect(removed.count == 1 && removed.first?.detail?.contains("slot \(number)") == true)
        #expect(removed.first?.detail?.contains("small order") == true)
    }

    @Test("recover refuses an escrow slot whose encapsulated key has small order")
    func recoverRefusesForgedSlot() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db")
        let manager = DatabaseKeyManager(
            databasePath: path, kms: try localKms(), configuration: .init(keyCacheTTL: .zero), logger: silentLogger)
        try await manager.initialize()
        let escrow = try EscrowPrivateKey.generate()
        try await manager.addEscrowSlot(escrow.publicKey)
        var keyFile = try manager.load()
        let dataKey = try await manager.dataKey()
        let blob = try #require(keyFile.slots[0].encryptedDek.base64DecodedBytes)
        keyFile.slots[0].encryptedDek = WrappedDataKey(
            encoded: Data(Self.smallOrderEncodings[3] + blob.dropFirst(32)).base64EncodedString())
        try keyFile.sealed(with: dataKey).write(to: path + ".key")
        let before = try contents(path + ".key")
        let target = try localKms(masterKeyBase64: Data(repeating: 3, count: 32).base64EncodedString())
        await expectError(.ciphertextInvalid, containing: ["small order"]) {
            _ = try await manager.recover(through: .escrow(escrow), to: target, kekId: "default")
        }
        #expect(try contents(path + ".key") == before)
    }
}

extension EscrowPublicKey {
    /// Whether a key read as a `.key` stores it reports small order.
    static func storedIsSmallOrder(_ raw: [UInt8]) -> Bool {
        (try? EscrowPublicKey(storedRawRepresentation: raw))?.hasSmallOrder ?? false
    }
}
