import Foundation

extension KeyFile {
    /// Parses and validates a `.key` file's bytes.
    ///
    /// Every field is checked; nothing is repaired. `source` names the file in messages.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileCorrupt`` for invalid JSON or fields,
    ///   ``DBKeyError/Code-swift.struct/unsupportedFormat`` for a file from a newer version.
    package init(jsonBytes: UnsafeRawBufferPointer, source: String) throws {
        let root: JSONValue
        do {
            root = try StrictJSONParser.parse(jsonBytes, maximumDepth: KeyFile.maximumNesting)
        } catch {
            throw DBKeyError(
                .keyFileCorrupt,
                "The key file \(source) is not valid JSON (\(error.reason)): truncated, overwritten or edited by hand? Restore it from a backup; the database cannot be opened without it.",
                path: source
            )
        }
        guard case .object(let object) = root else {
            throw DBKeyError(.keyFileCorrupt, "The key file \(source) holds \(root.typeName), not a JSON object.")
        }
        var fields = FieldReader(object, source: source, prefix: "")

        let format = try fields.optionalInteger("format")
        if let format {
            guard format >= 1 else {
                throw fields.invalid("format", "must be a positive integer")
            }
            guard format <= KeyFile.currentFormat else {
                throw DBKeyError(
                    .unsupportedFormat,
                    "The key file \(source) has format \(format), written by a newer DBKey (this one reads up to \(KeyFile.currentFormat)). Upgrade DBKey."
                )
            }
        }
        self.format = format
        self.kekId = try fields.nonEmptyString("kek_id")
        // Only the older seven-field form may leave the provider to be inferred from kek_id.
        self.kms = format == nil ? try fields.optionalString("kms") : try fields.nonEmptyString("kms")
        self.encryptedDek = WrappedDataKey(encoded: try fields.nonEmptyString("encrypted_dek"))
        self.version = try fields.positiveInteger("version")
        self.createdAt = try fields.date("created_at")
        self.rotatedAt = try fields.optionalDate("rotated_at")
        self.encryptionContext = try fields.context("encryption_context")
        self.dekSpec = try fields.nonEmptyString("dek_spec")
        guard dekSpec == KeyFile.dekSpecAES256 else {
            throw DBKeyError(
                .unsupportedFormat,
                "The key file \(source) has dek_spec \"\(dekSpec)\"; SQLCipher keys here are always \(KeyFile.dekSpecAES256)."
            )
        }
        self.keyCheck = try fields.optionalKeyCheck("key_check")
        self.rotationPeriodDays = try fields.optionalInteger("rotation_period_days")
        if let days = rotationPeriodDays, !(1...36_500).contains(days) {
            throw fields.invalid("rotation_period_days", "must be a number of days from 1 to 36500")
        }
        (self.cipher, self.unknownCipherFields) = try fields.cipher("cipher", fileFormat: format)
        self.pending = try fields.pending("pending", fileFormat: format)
        self.slots = try fields.slots("slots", fileFormat: format)
        self.mac = try fields.base64("mac", byteCount: 32)
        // Only the older seven-field form may lack a MAC: removing it must not remove the check.
        if format != nil, mac == nil {
            throw fields.invalid("mac", "is missing (a current-format .key file is always sealed)")
        }
        self.unknownFields = fields.remaining
    }

    /// The file's JSON: keys sorted, one field a line, unknown fields as they were read.
    package func jsonData() throws -> Data {
        var object = unknownFields
        object["format"] = format.map { .integer(Int64($0)) }
        object["kms"] = kms.map { .string($0) }
        object["kek_id"] = .string(kekId)
        object["encrypted_dek"] = .string(encryptedDek.encoded)
        object["version"] = .integer(Int64(version))
        object["created_at"] = .string(KeyFile.timestamp(createdAt))
        object["rotated_at"] = rotatedAt.map { .string(KeyFile.timestamp($0)) } ?? .null
        object["encryption_context"] = .object(encryptionContext.dictionary.mapValues { .string($0) })
        object["dek_spec"] = .string(dekSpec)
        object["key_check"] = keyCheck.map { .string($0.base64) }
        object["rotation_period_days"] = rotationPeriodDays.map { .integer(Int64($0)) }
        object["mac"] = mac.map { .string(Base64.encode($0)) }
        object["cipher"] = cipher.jsonValue(keeping: unknownCipherFields)
        object["slots"] = KeySlot.jsonValue(slots)
        object["pending"] =
            pending.map { pending in
                var fields = pending.unknownFields
                fields["operation"] = .string(pending.operation.rawValue)
                fields["encrypted_dek"] = .string(pending.encryptedDek.encoded)
                fields["kek_id"] = .string(pending.kekId)
                fields["kms"] = .string(pending.kms)
                fields["version"] = .integer(Int64(pending.version))
                fields["key_check"] = .string(pending.keyCheck.base64)
                fields["started_at"] = .string(KeyFile.timestamp(pending.startedAt))
                fields["cipher"] = pending.cipher.map { $0.jsonValue(keeping: pending.unknownCipherFields) }
                fields["slots"] = KeySlot.jsonValue(pending.slots)
                fields["copy"] = pending.copy.map { copy in
                    .object([
                        "name": .string(copy.name), "size": .integer(copy.size),
                        "checksum": .string(Base64.encode(copy.checksum)),
                    ])
                }
                return .object(fields)
            } ?? .null
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(JSONValue.object(object))
        data.append(UInt8(ascii: "\n"))
        return data
    }

    /// The current time at the file's precision (whole seconds), so that a record in memory
    /// equals the one read back.
    static func now() -> Date {
        Date(timeIntervalSince1970: Date().timeIntervalSince1970.rounded(.down))
    }

    static func timestamp(_ date: Date) -> String {
        date.formatted(.iso8601)
    }
}

extension CipherSettings {
    /// The `cipher` object: the fields that differ from what their absence means are written.
    func jsonValue(keeping unknownFields: [String: JSONValue]) -> JSONValue {
        var object = unknownFields
        object["page_size"] = .integer(Int64(pageSize))
        object["sqlcipher"] = sqlcipherVersion.map { .string($0) }
        object["salt"] = salt.map { .string(Base64.encode($0)) }
        object["compatibility"] = compatibility.map { .integer(Int64($0)) }
        object["hmac_algorithm"] = hmacAlgorithm.map { .string($0.rawValue) }
        object["kdf_algorithm"] = kdfAlgorithm.map { .string($0.rawValue) }
        object["plaintext_header_size"] = plaintextHeaderSize == 0 ? nil : .integer(Int64(plaintextHeaderSize))
        return .object(object)
    }
}

/// Reads typed fields out of a JSON object, remembering which were read so that the rest can be
/// kept as unknown fields.
private struct FieldReader {
    private(set) var remaining: [String: JSONValue]
    let source: String
    let prefix: String

    init(_ object: [String: JSONValue], source: String, prefix: String) {
        self.remaining = object
        self.source = source
        self.prefix = prefix
    }

    func invalid(_ name: String, _ rule: String, found value: JSONValue? = nil) -> DBKeyError {
        let found = value.map { ", found \($0.typeName)" } ?? ""
        return DBKeyError(
            .keyFileCorrupt,
            "The key file \(source) is invalid: \"\(prefix)\(name)\" \(rule)\(found). Restore the file from a backup."
        )
    }

    /// Whether the field is present and not null.
    func has(_ name: String) -> Bool {
        remaining[name].map { $0 != .null } ?? false
    }

    /// The field's value, or `nil` when it is absent or null.
    mutating func take(_ name: String) -> JSONValue? {
        let value = remaining.removeValue(forKey: name)
        return value == .null ? nil : value
    }

    mutating func required(_ name: String) throws -> JSONValue {
        guard let value = take(name) else {
            throw invalid(name, "is missing")
        }
        return value
    }

    mutating func optionalString(_ name: String) throws -> String? {
        guard let value = take(name) else { return nil }
        guard case .string(let string) = value, !string.isEmpty else {
            throw invalid(name, "must be a non-empty string", found: value)
        }
        return string
    }

    mutating func nonEmptyString(_ name: String) throws -> String {
        guard let string = try optionalString(name) else {
            throw invalid(name, "is missing")
        }
        return string
    }

    mutating func optionalInteger(_ name: String) throws -> Int? {
        guard let value = take(name) else { return nil }
        guard case .integer(let integer) = value, let result = Int(exactly: integer) else {
            throw invalid(name, "must be an integer", found: value)
        }
        return result
    }

    mutating func positiveInteger(_ name: String) throws -> Int {
        let value = try required(name)
        guard case .integer(let integer) = value, integer >= 1, let result = Int(exactly: integer) else {
            throw invalid(name, "must be a positive integer", found: value)
        }
        return result
    }

    mutating func optionalDate(_ name: String) throws -> Date? {
        guard let value = take(name) else { return nil }
        guard case .string(let text) = value else {
            throw invalid(name, "must be an ISO 8601 date string", found: value)
        }
        // The whole text is the date: Foundation's parser stops at the date and ignores what
        // follows it, which a file must not carry unnoticed.
        guard
            text.wholeMatch(
                of: /[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})/)
                != nil,
            let date = (try? Date(text, strategy: .iso8601))
                ?? (try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
        else {
            throw invalid(name, "must be an ISO 8601 date such as 2024-01-15T10:30:00Z")
        }
        return date
    }

    mutating func date(_ name: String) throws -> Date {
        guard let date = try optionalDate(name) else {
            throw invalid(name, "is missing")
        }
        return date
    }

    mutating func context(_ name: String) throws -> EncryptionContext {
        let value = try required(name)
        guard case .object(let object) = value else {
            throw invalid(name, "must be an object of strings", found: value)
        }
        var dictionary: [String: String] = [:]
        for (key, entry) in object {
            guard case .string(let string) = entry else {
                throw invalid("\(name).\(key)", "must be a string", found: entry)
            }
            dictionary[key] = string
        }
        return EncryptionContext(dictionary)
    }

    mutating func base64(_ name: String, byteCount: Int) throws -> [UInt8]? {
        guard let value = take(name) else { return nil }
        guard case .string(let text) = value, let bytes = Base64.decode(text), bytes.count == byteCount else {
            throw invalid(name, "must be base64 of \(byteCount) bytes", found: value)
        }
        return bytes
    }

    mutating func optionalKeyCheck(_ name: String) throws -> KeyCheck? {
        try base64(name, byteCount: KeyCheck.byteCount).flatMap { KeyCheck(bytes: $0) }
    }

    mutating func object(_ name: String) throws -> FieldReader? {
        guard let value = take(name) else { return nil }
        guard case .object(let object) = value else {
            throw invalid(name, "must be an object", found: value)
        }
        return FieldReader(object, source: source, prefix: "\(prefix)\(name).")
    }

    /// The `cipher` object. The fields recording the format, algorithms and plaintext header
    /// came with format 3, whose MAC covers them: an older file holding one is refused, since
    /// nothing would vouch for it.
    mutating func cipher(_ name: String, fileFormat: Int?) throws -> (CipherSettings, [String: JSONValue]) {
        // Files without cipher settings were written with SQLCipher 3's defaults.
        guard var fields = try object(name) else {
            return (CipherSettings(pageSize: CipherSettings.sqlcipherDefaultPageSize), [:])
        }
        let pageSize = try fields.optionalInteger("page_size") ?? CipherSettings.sqlcipherDefaultPageSize
        guard CipherSettings.isValidPageSize(pageSize) else {
            throw fields.invalid("page_size", "must be a power of two from 512 to 65536")
        }
        var settings = CipherSettings(
            pageSize: pageSize,
            sqlcipherVersion: try fields.optionalString("sqlcipher"),
            salt: try fields.base64("salt", byteCount: CipherSettings.saltByteCount)
        )
        let formatFields = ["compatibility", "hmac_algorithm", "kdf_algorithm", "plaintext_header_size"]
        if (fileFormat ?? 1) < KeyFile.cipherFieldsFormat {
            if let present = formatFields.first(where: { fields.has($0) }) {
                throw fields.invalid(present, "needs a format \(KeyFile.cipherFieldsFormat) file, whose MAC covers it")
            }
            return (settings, fields.remaining)
        }
        settings.compatibility = try fields.optionalInteger("compatibility")
        settings.hmacAlgorithm = try fields.optionalString("hmac_algorithm").map { text in
            guard let algorithm = CipherSettings.HMACAlgorithm(rawValue: text) else {
                throw fields.invalid("hmac_algorithm", "must be HMAC_SHA1, HMAC_SHA256 or HMAC_SHA512")
            }
            return algorithm
        }
        settings.kdfAlgorithm = try fields.optionalString("kdf_algorithm").map { text in
            guard let algorithm = CipherSettings.KDFAlgorithm(rawValue: text) else {
                throw fields.invalid(
                    "kdf_algorithm", "must be PBKDF2_HMAC_SHA1, PBKDF2_HMAC_SHA256 or PBKDF2_HMAC_SHA512")
            }
            return algorithm
        }
        settings.plaintextHeaderSize = try fields.optionalInteger("plaintext_header_size") ?? 0
        if let problem = settings.problem {
            throw DBKeyError(
                .keyFileCorrupt,
                "The key file \(source) is invalid: its \"\(prefix)\(name)\" settings cannot open a database (\(problem)). Restore the file from a backup."
            )
        }
        return (settings, fields.remaining)
    }

    mutating func pending(_ name: String, fileFormat: Int?) throws -> PendingOperation? {
        guard var fields = try object(name) else { return nil }
        guard let keyCheck = try fields.optionalKeyCheck("key_check") else {
            throw fields.invalid("key_check", "is missing")
        }
        let operationName = try fields.nonEmptyString("operation")
        guard let operation = KeyChangeKind(rawValue: operationName) else {
            throw DBKeyError(
                .unsupportedFormat,
                "The key file \(source) records an interrupted \"\(operationName)\", which this version of DBKey does not know how to finish. Use the DBKey version that started it.",
                path: source
            )
        }
        var pending = PendingOperation(
            operation: operation,
            encryptedDek: WrappedDataKey(encoded: try fields.nonEmptyString("encrypted_dek")),
            kekId: try fields.nonEmptyString("kek_id"),
            kms: try fields.nonEmptyString("kms"),
            version: try fields.positiveInteger("version"),
            keyCheck: keyCheck,
            startedAt: try fields.date("started_at")
        )
        if fields.has("cipher") {
            guard (fileFormat ?? 1) >= KeyFile.cipherFieldsFormat else {
                throw fields.invalid("cipher", "needs a format \(KeyFile.cipherFieldsFormat) file, whose MAC covers it")
            }
            let (cipher, unknownCipherFields) = try fields.cipher("cipher", fileFormat: fileFormat)
            pending.cipher = cipher
            pending.unknownCipherFields = unknownCipherFields
        }
        pending.slots = try fields.slots("slots", fileFormat: fileFormat)
        pending.copy = try fields.rotationCopy("copy")
        guard (pending.copy != nil) == (operation == .rotateByCopy) else {
            throw fields.invalid(
                "copy", "must be present exactly when the operation is \"\(KeyChangeKind.rotateByCopy.rawValue)\"")
        }
        pending.unknownFields = fields.remaining
        return pending
    }

    /// The `copy` object of a rotation by copy: a plain file name, a positive size and a
    /// 32-byte checksum.
    mutating func rotationCopy(_ name: String) throws -> RotationCopy? {
        guard var fields = try object(name) else { return nil }
        let fileName = try fields.nonEmptyString("name")
        guard !fileName.contains("/"), fileName != ".", fileName != ".." else {
            throw fields.invalid("name", "must be a file name in the database's directory")
        }
        let size = try fields.positiveInteger("size")
        guard let checksum = try fields.base64("checksum", byteCount: 32) else {
            throw fields.invalid("checksum", "is missing")
        }
        return RotationCopy(name: fileName, size: Int64(size), checksum: checksum)
    }

    /// The `slots` array (format 4): numbered from 1, each number once, at most
    /// ``KeySlot/maximumAdditionalSlots``; an escrow slot carries its public key.
    mutating func slots(_ name: String, fileFormat: Int?) throws -> [KeySlot] {
        guard let value = take(name) else { return [] }
        guard (fileFormat ?? 1) >= KeyFile.slotsFormat else {
            throw invalid(name, "needs a format \(KeyFile.slotsFormat) file, whose MAC covers it")
        }
        guard case .array(let entries) = value else {
            throw invalid(name, "must be an array of slot objects", found: value)
        }
        guard entries.count <= KeySlot.maximumAdditionalSlots else {
            throw invalid(
                name,
                "holds \(entries.count) slots; a .key file has at most \(KeySlot.maximumAdditionalSlots) besides its primary KEK"
            )
        }
        var slots: [KeySlot] = []
        for (index, entry) in entries.enumerated() {
            guard case .object(let object) = entry else {
                throw invalid("\(name)[\(index)]", "must be an object", found: entry)
            }
            var fields = FieldReader(object, source: source, prefix: "\(prefix)\(name)[\(index)].")
            let number = try fields.positiveInteger("slot")
            guard !slots.contains(where: { $0.number == number }) else {
                throw invalid("\(name)[\(index)].slot", "repeats slot number \(number)")
            }
            var slot = KeySlot(
                number: number,
                kms: try fields.nonEmptyString("kms"),
                kekId: try fields.nonEmptyString("kek_id"),
                encryptedDek: WrappedDataKey(encoded: try fields.nonEmptyString("encrypted_dek"))
            )
            if slot.isEscrow {
                guard let publicKey = try fields.base64("public_key", byteCount: EscrowSeal.keyByteCount) else {
                    throw fields.invalid("public_key", "is missing (an escrow slot names its public key)")
                }
                slot.escrowPublicKey = try EscrowPublicKey(storedRawRepresentation: publicKey)
            }
            slot.unknownFields = fields.remaining
            slots.append(slot)
        }
        return slots
    }
}
