import Crypto
import Foundation

extension KeyFile {
    /// The record with its `mac` set: HMAC-SHA256, keyed by the current data key, over every
    /// field this version knows.
    ///
    /// Only a holder of the data key can produce it, so a `.key` file whose version, dates,
    /// cipher settings, rotation period or pending record were changed by hand is refused
    /// instead of being believed.
    func sealed(with key: SecureBuffer) -> KeyFile {
        var sealed = self
        sealed.mac = KeyFile.mac(of: self, key: key)
        return sealed
    }

    /// Checks the `mac` against the unwrapped data key; files written before it existed have
    /// none and pass.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileCorrupt`` when the file was altered.
    func verifySeal(with key: SecureBuffer, source: String) throws {
        guard let mac else { return }
        let expected = KeyFile.mac(of: self, key: key)
        guard expected.count == mac.count, zip(expected, mac).reduce(UInt8(0), { $0 | ($1.0 ^ $1.1) }) == 0 else {
            throw DBKeyError(
                .keyFileCorrupt,
                "\(source) was altered: its fields do not match its MAC (version, dates, settings or pending record changed by hand). Restore it from a backup."
            )
        }
    }

    /// HMAC-SHA256(data key, `"dbkey key file v2"` ‖ each field, length-prefixed, in a fixed
    /// order). Format 3 files are labelled `v3` and add the cipher fields that came with it,
    /// of the current settings and of the pending record's. Format 4 files are labelled `v4`
    /// and add every key slot, current and pending.
    static func mac(of keyFile: KeyFile, key: SecureBuffer) -> [UInt8] {
        let format = keyFile.format ?? 1
        let coversCipherFields = format >= KeyFile.cipherFieldsFormat
        let coversSlots = format >= KeyFile.slotsFormat
        let label = coversSlots ? "v4" : coversCipherFields ? "v3" : "v2"
        var message = Array("dbkey key file \(label)".utf8)
        func field(_ text: String?) {
            guard let text else {
                message.append(contentsOf: [0xFF, 0xFF, 0xFF, 0xFF])
                return
            }
            let bytes = Array(text.utf8)
            withUnsafeBytes(of: UInt32(bytes.count).bigEndian) { message.append(contentsOf: $0) }
            message.append(contentsOf: bytes)
        }
        field(keyFile.format.map(String.init))
        field(keyFile.kms)
        field(keyFile.kekId)
        field(keyFile.encryptedDek.encoded)
        field(String(keyFile.version))
        field(timestamp(keyFile.createdAt))
        field(keyFile.rotatedAt.map(timestamp))
        field(Base64.encode(keyFile.encryptionContext.canonicalEncoding))
        field(keyFile.dekSpec)
        field(keyFile.keyCheck?.base64)
        field(keyFile.rotationPeriodDays.map(String.init))
        field(String(keyFile.cipher.pageSize))
        field(keyFile.cipher.sqlcipherVersion)
        field(keyFile.cipher.salt.map(Base64.encode))
        if let pending = keyFile.pending {
            field(pending.operation.rawValue)
            field(pending.encryptedDek.encoded)
            field(pending.kekId)
            field(pending.kms)
            field(String(pending.version))
            field(pending.keyCheck.base64)
            field(timestamp(pending.startedAt))
        } else {
            field(nil)
        }
        if coversCipherFields {
            func cipherFields(_ cipher: CipherSettings?) {
                guard let cipher else { return field(nil) }
                field("cipher")
                field(String(cipher.pageSize))
                field(cipher.sqlcipherVersion)
                field(cipher.salt.map(Base64.encode))
                field(cipher.compatibility.map(String.init))
                field(cipher.hmacAlgorithm?.rawValue)
                field(cipher.kdfAlgorithm?.rawValue)
                field(String(cipher.plaintextHeaderSize))
            }
            cipherFields(keyFile.cipher)
            cipherFields(keyFile.pending?.cipher)
        }
        if coversSlots {
            func slotFields(_ slots: [KeySlot]) {
                field(String(slots.count))
                for slot in slots {
                    field(String(slot.number))
                    field(slot.kms)
                    field(slot.kekId)
                    field(slot.encryptedDek.encoded)
                    field(slot.escrowPublicKey.map { Base64.encode($0.rawRepresentation) })
                }
            }
            slotFields(keyFile.slots)
            slotFields(keyFile.pending?.slots ?? [])
        }
        // Only a rotation by copy has these (older files never do): its record names the copy.
        if let copy = keyFile.pending?.copy {
            field("copy")
            field(copy.name)
            field(String(copy.size))
            field(Base64.encode(copy.checksum))
        }
        return KeyedCrypto.authenticationCode(.sha256, key: key, message: message)
    }
}
