import Crypto
import Foundation
internal import SwiftASN1

/// The public half of an escrow key: X25519, given to `init` or `slot add` so that the data key
/// can be sealed to it (and re-sealed at every rotation) with no private key on the device.
///
/// Its file is PEM, as `openssl pkey -pubout` writes it (`-----BEGIN PUBLIC KEY-----`).
public struct EscrowPublicKey: Sendable, Hashable {
    /// The 32-byte X25519 public key.
    public let rawRepresentation: [UInt8]

    /// Creates a key from its 32 bytes, refusing a key that would leak what is sealed to it.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for another length, or for
    ///   a key of small order (see ``hasSmallOrder``).
    public init(rawRepresentation: [UInt8]) throws {
        try self.init(storedRawRepresentation: rawRepresentation)
        try requireSafeToSealTo()
    }

    /// A key as a `.key` file records it: the length is checked, the order is not, so that a file
    /// holding an unsafe slot still opens and the slot can be removed (``hasSmallOrder`` tells).
    init(storedRawRepresentation rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == EscrowSeal.keyByteCount else {
            throw DBKeyError(
                .invalidConfiguration,
                "An escrow public key is 32 bytes (X25519); this one has \(rawRepresentation.count).")
        }
        self.rawRepresentation = rawRepresentation
    }

    /// Whether the key is one of the 14 encodings of a point of small order (RFC 7748 §6.1: u = 0,
    /// 1, p−1, the two points of order 8, and the non-canonical p and p+1, each with and without
    /// bit 255). HPKE's shared secret with such a key is the same for every sender, so anyone
    /// holding a seal made to it could open it: DBKey never seals to one.
    public var hasSmallOrder: Bool { X25519Validation.hasSmallOrder(rawRepresentation) }

    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a key of small order.
    func requireSafeToSealTo() throws {
        guard !hasSmallOrder else {
            throw DBKeyError(
                .invalidConfiguration,
                "The escrow public key \(id) is a point of small order (RFC 7748 §6.1): anything sealed to it could be opened by anyone holding the .key, so DBKey refuses it and changed nothing. Make a new escrow key (dbkey escrow keygen) and use its .pub file."
            )
        }
    }

    /// Reads a PEM public key file (`SubjectPublicKeyInfo` of an X25519 key).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` when the file is not one.
    public init(pemFile path: String) throws {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        guard let size = attributes?[.size] as? Int, size <= 4096,
            let contents = FileManager.default.contents(atPath: path)
        else {
            throw DBKeyError(
                .invalidConfiguration, "\(path) is not a readable escrow public key file (at most 4 KiB).", path: path)
        }
        guard let document = try? PEMDocument(pemString: String(decoding: contents, as: UTF8.self)),
            document.discriminator == "PUBLIC KEY",
            case let der = document.derBytes,
            der.count == EscrowSeal.publicKeyPrefix.count + EscrowSeal.keyByteCount,
            der.starts(with: EscrowSeal.publicKeyPrefix)
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(path) is not an X25519 public key in PEM (-----BEGIN PUBLIC KEY-----, as dbkey escrow keygen or openssl pkey -pubout writes it).",
                path: path)
        }
        try self.init(rawRepresentation: Array(der.suffix(EscrowSeal.keyByteCount)))
    }

    /// The key in PEM, as OpenSSL writes it.
    public var pemRepresentation: String {
        PEMDocument(type: "PUBLIC KEY", derBytes: EscrowSeal.publicKeyPrefix + rawRepresentation).pemString + "\n"
    }

    /// `x25519:` and the first 8 bytes of SHA-256 of the key in hex: the `kek_id` of its slots.
    public var id: String {
        "x25519:" + SHA256.hash(data: rawRepresentation).prefix(8).lowercaseHex
    }
}

/// The private half of an escrow key, kept offline (a safe, a hardware token, a person): it
/// opens the escrow slot of every database sealed to its public key, without any KMS.
///
/// It is written as PKCS#8 PEM, the form `openssl genpkey -algorithm X25519` writes and OpenSSL
/// reads, or printed as a ``recoveryCode`` a person can type.
public struct EscrowPrivateKey: Sendable {
    let key: SecureBuffer

    /// Creates a new random key.
    public static func generate() throws -> EscrowPrivateKey {
        EscrowPrivateKey(key: try SecureBuffer.random(count: EscrowSeal.keyByteCount))
    }

    init(key: SecureBuffer) {
        self.key = key
    }

    /// Reads a PKCS#8 PEM private key file (owner-only permissions, as for every key file).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileInsecure`` for a file others can read;
    ///   ``DBKeyError/Code-swift.struct/invalidConfiguration`` when it is not an X25519 key.
    public init(pemFile path: String) throws {
        let contents = try ProtectedFile.read(
            at: path, maxSize: 4096, kind: "escrow private key", missingCode: .keyFileMissing)
        guard let der = PEM.decodeSecret(contents, label: "PRIVATE KEY"),
            der.count == EscrowSeal.privateKeyPrefix.count + EscrowSeal.keyByteCount,
            der.withUnsafeBytes({ $0.starts(with: EscrowSeal.privateKeyPrefix) })
        else {
            throw DBKeyError(
                .invalidConfiguration,
                "\(path) is not an X25519 private key in PKCS#8 PEM (-----BEGIN PRIVATE KEY-----, as dbkey escrow keygen or openssl genpkey -algorithm X25519 writes it).",
                path: path)
        }
        self.key = der.withUnsafeBytes { SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.suffix(32))) }
    }

    /// Reads a recovery code (see ``recoveryCode``).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` naming the group whose
    ///   check symbol does not match (a mistyped character), never the code's text.
    public init(recoveryCode text: SecureBuffer) throws {
        self.key = try RecoveryCode.decode(text)
    }

    /// The key in PKCS#8 PEM, in a buffer that is wiped when released.
    public var pemRepresentation: SecureBuffer {
        let der = SecureBuffer(count: EscrowSeal.privateKeyPrefix.count + EscrowSeal.keyByteCount) { bytes in
            bytes.copyBytes(from: EscrowSeal.privateKeyPrefix)
            key.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: bytes[EscrowSeal.privateKeyPrefix.count...]).copyMemory(
                    from: $0)
            }
        }
        return PEM.encodeSecret(der, label: "PRIVATE KEY")
    }

    /// The key as 13 groups of four Crockford base32 symbols, each followed by a check symbol
    /// (the group's value mod 37), for a person to write down and type: every mistyped symbol
    /// and every swap of two neighbours within a group is caught, and the group named.
    public var recoveryCode: SecureBuffer { RecoveryCode.encode(key) }

    /// Writes the private key to `path` (PKCS#8 PEM, mode 0600) and the public key to
    /// `path.pub`, each durably and never over an existing file.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` (a file already there, a full disk); a
    ///   private key written before the public key failed is removed again.
    public func write(to path: String) throws {
        try pemRepresentation.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path, replacing: false) }
        do {
            try Array(publicKey.pemRepresentation.utf8).withUnsafeBytes {
                try ProtectedFile.writeAtomically($0, to: path + ".pub", replacing: false)
            }
        } catch {
            _ = unlink(path)
            throw error
        }
    }

    /// The public key that seals to this key.
    public var publicKey: EscrowPublicKey {
        // The KEM's own type holds the scalar while the public key is derived.
        let derived = key.withUnsafeBytes { bytes in
            (try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: bytes)).map {
                Array($0.publicKey.rawRepresentation)
            }
        }
        // 32 bytes always make an X25519 private key.
        return try! EscrowPublicKey(rawRepresentation: derived!)
    }
}

/// The escrow slot's seal: HPKE (RFC 9180) base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
/// AES-256-GCM, with `info` = `"dbkey-escrow-v1"` ‖ 0x00 ‖ the encryption context's canonical
/// encoding and `aad` = the database's salt (16 bytes) ‖ the data key's version (u32, big
/// endian). The stored form is base64(encapsulated key (32) ‖ ciphertext (32) ‖ tag (16)).
enum EscrowSeal {
    static let keyByteCount = 32
    static let sealedByteCount = 32 + 32 + 16
    static let infoLabel = Array("dbkey-escrow-v1".utf8)
    /// PKCS#8 `PrivateKeyInfo` for X25519 (RFC 8410), before the 32 key bytes.
    static let privateKeyPrefix: [UInt8] = [
        0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x6E, 0x04, 0x22, 0x04, 0x20,
    ]
    /// `SubjectPublicKeyInfo` for X25519 (RFC 8410), before the 32 key bytes.
    static let publicKeyPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x6E, 0x03, 0x21, 0x00]
    static let suite = HPKE.Ciphersuite(kem: .Curve25519_HKDF_SHA256, kdf: .HKDF_SHA256, aead: .AES_GCM_256)

    static func info(_ context: EncryptionContext) -> Data {
        Data(infoLabel + [0] + context.canonicalEncoding)
    }

    static func aad(salt: [UInt8], version: Int) -> Data {
        var aad = salt
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: version).bigEndian) { aad.append(contentsOf: $0) }
        return Data(aad)
    }

    /// Seals `key` to `publicKey` for the database with `salt` at data key `version`.
    static func seal(
        _ key: SecureBuffer, to publicKey: EscrowPublicKey, context: EncryptionContext, salt: [UInt8], version: Int
    ) throws -> WrappedDataKey {
        try publicKey.requireSafeToSealTo()
        do {
            let recipient = try Curve25519.KeyAgreement.PublicKey(rawRepresentation: publicKey.rawRepresentation)
            var sender = try HPKE.Sender(recipientKey: recipient, ciphersuite: suite, info: info(context))
            let sealed = try key.withUnsafeBytes {
                try sender.seal($0, authenticating: aad(salt: salt, version: version))
            }
            return WrappedDataKey(encoded: Base64.encode(Array(sender.encapsulatedKey) + Array(sealed)))
        } catch {
            throw DBKeyError(.invalidConfiguration, "Sealing the data key to the escrow key \(publicKey.id) failed.")
        }
    }

    /// Opens an escrow slot's seal with the private key.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/ciphertextInvalid`` when the seal was altered,
    ///   belongs to another database, salt or key version, or to another escrow key.
    static func open(
        _ wrapped: WrappedDataKey, with privateKey: EscrowPrivateKey, context: EncryptionContext, salt: [UInt8],
        version: Int
    ) throws -> SecureBuffer {
        guard let blob = wrapped.base64DecodedBytes, blob.count == sealedByteCount else {
            throw DBKeyError(
                .ciphertextInvalid, "The escrow slot is not an HPKE seal of \(sealedByteCount) bytes: it was altered.")
        }
        // RFC 9180 §7.1.4: the recipient refuses an encapsulated key whose shared secret would be
        // all zero, one no honest sender makes.
        guard !X25519Validation.hasSmallOrder(blob.prefix(keyByteCount)) else {
            throw DBKeyError(
                .ciphertextInvalid,
                "The escrow slot's encapsulated key is a point of small order (RFC 7748 §6.1), which no HPKE sender makes: the slot was forged or altered, and it was not opened."
            )
        }
        do {
            let secret = try privateKey.key.withUnsafeBytes {
                try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: $0)
            }
            var recipient = try HPKE.Recipient(
                privateKey: secret, ciphersuite: suite, info: info(context), encapsulatedKey: Data(blob.prefix(32)))
            var plaintext = try recipient.open(blob.dropFirst(32), authenticating: aad(salt: salt, version: version))
            return SecureBuffer.takingAndWiping(&plaintext)
        } catch {
            throw DBKeyError(
                .ciphertextInvalid,
                "The escrow slot does not open with this private key: the key is another escrow key, or the slot was altered or belongs to another database or key version."
            )
        }
    }
}

/// The check RFC 7748 §6.1 and RFC 9180 §7.1.4 ask of X25519 public keys, which swift-crypto
/// leaves to its caller (it returns an all-zero shared secret rather than failing).
enum X25519Validation {
    /// A fixed scalar: X25519 clamps it to a multiple of 8, and a multiple of 8 times a point of
    /// order 1, 2, 4 or 8 is the identity, whose u-coordinate is 0. For a point of large order the
    /// product is never the identity, so the all-zero output tells exactly the small-order points.
    private static let probe: Curve25519.KeyAgreement.PrivateKey = {
        // 32 bytes always make a private key.
        try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: [UInt8](repeating: 0x5A, count: 32))
    }()

    /// Whether the 32-byte u-coordinate `publicKey` has small order; anything not 32 bytes is
    /// treated as unsafe.
    static func hasSmallOrder<Bytes: Collection<UInt8>>(_ publicKey: Bytes) -> Bool {
        guard publicKey.count == EscrowSeal.keyByteCount,
            let point = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: Array(publicKey)),
            let shared = try? probe.sharedSecretFromKeyAgreement(with: point)
        else { return true }
        return shared.withUnsafeBytes { bytes in bytes.reduce(0) { $0 | $1 } == 0 }
    }
}

/// PEM armour (RFC 7468) for the escrow private key file, kept in locked memory from end to end
/// (public keys go through SwiftASN1's `PEMDocument`, whose strings and arrays a secret must
/// not pass through).
enum PEM {
    /// The DER inside a secret PEM file, decoded without leaving locked memory.
    static func decodeSecret(_ contents: SecureBuffer, label: String) -> SecureBuffer? {
        contents.withUnsafeBytes { bytes -> SecureBuffer? in
            guard let body = body(of: bytes, label: label) else { return nil }
            let compact = SecureBuffer(count: body.count { !$0.isWhitespace }) { output in
                var index = 0
                for byte in body where !byte.isWhitespace {
                    output[index] = byte
                    index += 1
                }
            }
            return compact.withUnsafeBytes { SecureBuffer.decodingBase64($0) }
        }
    }

    static func encodeSecret(_ der: SecureBuffer, label: String) -> SecureBuffer {
        let encoded = der.base64Encoded()
        let header = Array("-----BEGIN \(label)-----\n".utf8)
        let footer = Array("\n-----END \(label)-----\n".utf8)
        // The encoded DER of an X25519 key (64 characters) fits one line.
        return SecureBuffer(count: header.count + encoded.count + footer.count) { output in
            output.copyBytes(from: header)
            encoded.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: output[header.count...]).copyMemory(from: $0)
            }
            UnsafeMutableRawBufferPointer(rebasing: output[(header.count + encoded.count)...]).copyBytes(from: footer)
        }
    }

    private static func body(of contents: UnsafeRawBufferPointer, label: String) -> UnsafeRawBufferPointer.SubSequence?
    {
        let begin = Array("-----BEGIN \(label)-----".utf8)
        let end = Array("-----END \(label)-----".utf8)
        guard let start = contents.firstRange(of: begin), let finish = contents.firstRange(of: end),
            start.upperBound <= finish.lowerBound
        else { return nil }
        return contents[start.upperBound..<finish.lowerBound]
    }
}

extension UInt8 {
    fileprivate var isWhitespace: Bool { self == 0x20 || self == 0x0A || self == 0x0D || self == 0x09 }
}
