import Foundation
import SQLCipherKeyManagerAWS
import SystemPackage
import Testing

@testable import SQLCipherKeyManager

@Suite("The .key file", .tags(.core))
struct KeyFileTests {
    static let sevenFieldFixture = repositoryRoot.path + "/Fixtures/key-files/seven-field.key"

    func sampleKeyFile() -> KeyFile {
        var keyFile = KeyFile(
            kms: "local",
            kekId: "local:0011223344556677",
            encryptedDek: WrappedDataKey(encoded: "AQID"),
            createdAt: Date(timeIntervalSince1970: 1_700_000_000),
            encryptionContext: ["purpose": "notes", "env": "test"],
            keyCheck: KeyCheck(bytes: Array(0..<16))!,
            rotationPeriodDays: 30,
            cipher: CipherSettings(pageSize: 4096, sqlcipherVersion: "3.4.1", salt: Array(repeating: 9, count: 16))
        )
        keyFile.rotatedAt = Date(timeIntervalSince1970: 1_700_086_400)
        return keyFile.sealed(with: secureBuffer(hex: String(repeating: "42", count: 32)))
    }

    @Test("writing then reading gives back the same record, in a 0600 file")
    func roundTrip() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db.key")
        let keyFile = sampleKeyFile()
        try keyFile.write(to: path)
        #expect(try KeyFile.read(from: path) == keyFile)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        // Nothing left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path) == ["app.db.key"])
    }

    @Test(
        "the parsed-file cache answers only for the very file it parsed: a rewritten or edited .key is read again, a corrupt one refused"
    )
    func parsedFileCache() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db.key")
        let cache = KeyFileCache()
        var keyFile = sampleKeyFile()
        try keyFile.write(to: path)
        #expect(try KeyFile.read(from: path, cache: cache) == keyFile)
        let identity = KeyFileCache.Identity(try FilePath(path).stat())
        #expect(cache.keyFile(at: path, identity: identity) == keyFile, "the file it parsed is cached")
        #expect(try KeyFile.read(from: path, cache: cache) == keyFile)

        // Rewritten (a new file by rename): read again.
        keyFile.version = 7
        keyFile = keyFile.sealed(with: secureBuffer(hex: String(repeating: "42", count: 32)))
        try keyFile.write(to: path)
        #expect(try KeyFile.read(from: path, cache: cache).version == 7)

        // Edited in place, the same size: read again, and refused.
        var bytes = try contents(path)
        let brace = try #require(bytes.firstIndex(of: UInt8(ascii: "{")))
        bytes[brace] = UInt8(ascii: "[")
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try handle.write(contentsOf: bytes)
        try handle.close()
        await expectError(.keyFileCorrupt) { _ = try KeyFile.read(from: path, cache: cache) }
        // The checks on the file still run on every read: a group-readable file is refused.
        try keyFile.write(to: path)
        _ = try KeyFile.read(from: path, cache: cache)
        #expect(chmod(path, 0o640) == 0)
        await expectError(.keyFileInsecure) { _ = try KeyFile.read(from: path, cache: cache) }
    }

    @Test("a pending operation survives the round trip")
    func pendingRoundTrip() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db.key")
        var keyFile = sampleKeyFile()
        keyFile.pending = PendingOperation(
            operation: .rotate, encryptedDek: WrappedDataKey(encoded: "BAUG"), kekId: keyFile.kekId, kms: "local",
            version: 2, keyCheck: KeyCheck(bytes: Array(repeating: 1, count: 16))!,
            startedAt: Date(timeIntervalSince1970: 1_700_000_100)
        )
        try keyFile.write(to: path)
        #expect(try KeyFile.read(from: path) == keyFile)
    }

    @Test("the seven-field form from the design loads; the registered provider that claims its ARN owns it")
    func sevenFieldForm() async throws {
        let text = try String(contentsOfFile: Self.sevenFieldFixture, encoding: .utf8)
        let keyFile = try Array(text.utf8).withUnsafeBytes { try KeyFile(jsonBytes: $0, source: "fixture") }
        #expect(keyFile.format == nil)
        #expect(keyFile.kms == nil, "the file names no provider")
        let registry = KmsRegistry(factories: [LocalKms.factory, AWSKms.factory])
        #expect(registry.providerName(claimingLegacyKekId: keyFile.kekId) == "aws")
        #expect(KmsRegistry(factories: [LocalKms.factory]).providerName(claimingLegacyKekId: keyFile.kekId) == nil)
        #expect(keyFile.kekId == "arn:aws:kms:us-east-1:123456789012:key/abc123")
        #expect(keyFile.encryptedDek.encoded == "AQICAHh...base64...")
        #expect(keyFile.version == 1)
        #expect(keyFile.createdAt == Date(timeIntervalSince1970: 1_705_314_600))
        #expect(keyFile.rotatedAt == nil)
        #expect(keyFile.encryptionContext == ["purpose": "medical-db", "environment": "production"])
        #expect(keyFile.cipher.pageSize == 1024)
        #expect(keyFile.keyCheck == nil)
        #expect(keyFile.rotationPeriodDays == nil)
    }

    @Test("fields this version does not know survive a rewrite, at the top and inside cipher")
    func unknownFieldsKept() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db.key")
        var object = try #require(JSONSerialization.jsonObject(with: try sampleKeyFile().jsonData()) as? [String: Any])
        object["x_future"] = ["nested": [1, 2, 3], "flag": true]
        var cipher = try #require(object["cipher"] as? [String: Any])
        cipher["kdf_algorithm"] = "PBKDF2_HMAC_SHA512"
        object["cipher"] = cipher
        let data = try JSONSerialization.data(withJSONObject: object)
        try data.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path) }

        var keyFile = try KeyFile.read(from: path)
        keyFile.version += 1
        try keyFile.write(to: path)

        let rewritten = try #require(JSONSerialization.jsonObject(with: try contents(path)) as? [String: Any])
        #expect((rewritten["x_future"] as? [String: Any])?["flag"] as? Bool == true)
        #expect((rewritten["x_future"] as? [String: Any])?["nested"] as? [Int] == [1, 2, 3])
        #expect((rewritten["cipher"] as? [String: Any])?["kdf_algorithm"] as? String == "PBKDF2_HMAC_SHA512")
        #expect(rewritten["version"] as? Int == 2)
    }

    /// Writes `bytes` as a 0600 `.key` file, runs `read`, and checks the file is byte-for-byte
    /// unchanged afterwards.
    func expectRefused(
        _ code: DBKeyError.Code,
        containing fragments: [String],
        bytes: Data,
        prepare: (String) throws -> Void = { _ in },
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db.key")
        _ = FileManager.default.createFile(atPath: path, contents: bytes, attributes: [.posixPermissions: 0o600])
        try prepare(path)
        let before = try contents(path)
        let attributesBefore = try FileManager.default.attributesOfItem(atPath: path)
        await expectError(code, containing: fragments, sourceLocation: sourceLocation) {
            _ = try KeyFile.read(from: path)
        }
        // A refusal of the file itself (not of its contents, which the parse cache stands
        // for) is the same when the cache knows this very file, as on a warm open: every check
        // of the file runs before the cache is asked.
        if code == .keyFileInsecure || fragments.contains("64 KiB") {
            let cache = KeyFileCache()
            cache.store(sampleKeyFile(), at: path, identity: KeyFileCache.Identity(try FilePath(path).stat()))
            await expectError(code, containing: fragments, sourceLocation: sourceLocation) {
                _ = try KeyFile.read(from: path, cache: cache)
            }
        }
        #expect(try contents(path) == before, "the file changed", sourceLocation: sourceLocation)
        let attributesAfter = try FileManager.default.attributesOfItem(atPath: path)
        #expect(
            attributesAfter[.posixPermissions] as? Int == attributesBefore[.posixPermissions] as? Int,
            sourceLocation: sourceLocation)
        #expect(
            attributesAfter[.modificationDate] as? Date == attributesBefore[.modificationDate] as? Date,
            sourceLocation: sourceLocation)
    }

    @Test("a group-readable .key is refused with chmod advice, untouched")
    func groupReadable() async throws {
        try await expectRefused(
            .keyFileInsecure, containing: ["group or others", "chmod 600"], bytes: try sampleKeyFile().jsonData()
        ) {
            chmod($0, 0o640)
        }
    }

    @Test("a world-writable .key is refused, untouched")
    func worldWritable() async throws {
        try await expectRefused(.keyFileInsecure, containing: ["chmod 600"], bytes: try sampleKeyFile().jsonData()) {
            chmod($0, 0o602)
        }
    }

    @Test("a symbolic link is refused even when it points at a good file, and the target is untouched")
    func symbolicLink() async throws {
        let directory = try TemporaryDirectory()
        let target = directory.file("real.key")
        let link = directory.file("app.db.key")
        try sampleKeyFile().write(to: target)
        let before = try contents(target)
        #expect(symlink(target, link) == 0)
        await expectError(.keyFileInsecure, containing: ["symbolic link"]) {
            _ = try KeyFile.read(from: link)
        }
        // Also when the parse cache knows the file the link points at, under the link's name.
        let cache = KeyFileCache()
        cache.store(sampleKeyFile(), at: link, identity: KeyFileCache.Identity(try FilePath(target).stat()))
        await expectError(.keyFileInsecure, containing: ["symbolic link"]) {
            _ = try KeyFile.read(from: link, cache: cache)
        }
        #expect(try contents(target) == before)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link)) == target)
    }

    @Test("a file owned by another user is refused, and root is told to run as that user, not to take the file")
    func otherOwner() async throws {
        try await expectRefused(
            .keyFileInsecure, containing: ["uid 65534", "sudo -u '#65534'", "Do not chown it to root"],
            bytes: try sampleKeyFile().jsonData()
        ) {
            #expect(chown($0, 65534, 65534) == 0, "tests run as root, who can give a file away")
        }
    }

    @Test("a file with a second hard link is refused")
    func hardLink() async throws {
        try await expectRefused(.keyFileInsecure, containing: ["2 hard links"], bytes: try sampleKeyFile().jsonData()) {
            #expect(link($0, $0 + ".other") == 0)
        }
    }

    @Test("a directory in place of the .key is refused as not a regular file")
    func directoryInstead() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("app.db.key")
        try FileManager.default.createDirectory(
            atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
        await expectError(.keyFileInsecure, containing: ["not a regular file"]) {
            _ = try KeyFile.read(from: path)
        }
    }

    @Test("a truncated .key is refused as not valid JSON, untouched")
    func truncated() async throws {
        let data = try sampleKeyFile().jsonData()
        try await expectRefused(.keyFileCorrupt, containing: ["not valid JSON"], bytes: data.prefix(data.count / 2))
    }

    @Test("a .key that is not JSON is refused, untouched")
    func notJSON() async throws {
        try await expectRefused(.keyFileCorrupt, containing: ["not valid JSON"], bytes: Data("hunter2\n".utf8))
        try await expectRefused(.keyFileCorrupt, containing: ["not a JSON object"], bytes: Data("[1, 2]".utf8))
    }

    @Test("a field of the wrong type is refused, naming the field, untouched")
    func wrongTypes() async throws {
        let cases: [(field: String, value: Any, fragment: String)] = [
            ("version", "1", "\"version\" must be a positive integer, found a string"),
            ("version", 0, "\"version\" must be a positive integer"),
            ("kek_id", 5, "\"kek_id\" must be a non-empty string, found a number"),
            ("encryption_context", ["purpose": 1], "\"encryption_context.purpose\" must be a string"),
            ("created_at", "yesterday", "\"created_at\" must be an ISO 8601 date"),
            ("key_check", "AAAA", "\"key_check\" must be base64 of 16 bytes"),
            ("cipher", ["page_size": 1000], "\"cipher.page_size\" must be a power of two"),
            ("rotation_period_days", 0, "\"rotation_period_days\" must be a number of days"),
            ("pending", ["operation": "rotate"], "\"pending.key_check\" is missing"),
        ]
        for (field, value, fragment) in cases {
            var object = try #require(
                JSONSerialization.jsonObject(with: try sampleKeyFile().jsonData()) as? [String: Any])
            object[field] = value
            try await expectRefused(
                .keyFileCorrupt, containing: [fragment], bytes: try JSONSerialization.data(withJSONObject: object))
        }
        var missing = try #require(JSONSerialization.jsonObject(with: try sampleKeyFile().jsonData()) as? [String: Any])
        missing.removeValue(forKey: "encrypted_dek")
        try await expectRefused(
            .keyFileCorrupt, containing: ["\"encrypted_dek\" is missing"],
            bytes: try JSONSerialization.data(withJSONObject: missing))
    }

    @Test("a file from a newer format or with another key kind is refused as unsupported")
    func newerFormat() async throws {
        // Any provider id parses: whether it is registered is the manager's question.
        for (field, value): (String, Any) in [("format", KeyFile.currentFormat + 1), ("dek_spec", "AES_128")] {
            var object = try #require(
                JSONSerialization.jsonObject(with: try sampleKeyFile().jsonData()) as? [String: Any])
            object[field] = value
            try await expectRefused(
                .unsupportedFormat, containing: [], bytes: try JSONSerialization.data(withJSONObject: object))
        }
    }

    @Test(
        "duplicate members are refused wherever they are, also spelt with escapes: tools disagree on which counts",
        arguments: [
            ("top level, as appended by hand", "\"version\" : 1", "\"version\": 99"),
            ("inside cipher", "\"page_size\" : 4096", "\"page_size\": 1024"),
            ("spelt with an escape", "\"version\" : 1", "\"\\u0076ersion\": 99"),
        ])
    func duplicateMembers(place: String, existing: String, duplicate: String) async throws {
        var text = String(decoding: try sampleKeyFile().jsonData(), as: UTF8.self)
        let range = try #require(text.range(of: existing), "\(place): \(existing) not in the sample")
        text.replaceSubrange(range, with: existing + ",\n" + duplicate)
        try await expectRefused(.keyFileCorrupt, containing: ["duplicate member"], bytes: Data(text.utf8))
    }

    @Test("deep nesting is refused at once, at a cost linear in the input")
    func deepNesting() async throws {
        var sample = try #require(
            JSONSerialization.jsonObject(with: try sampleKeyFile().jsonData()) as? [String: Any])
        sample["unknown_field"] = [[["ok"]]]
        // Three levels below the root are kept, as fields a newer version adds.
        #expect(throws: Never.self) {
            _ = try JSONSerialization.data(withJSONObject: sample).withUnsafeBytes {
                try KeyFile(jsonBytes: $0, source: "sample")
            }
        }
        for depth in [5, 511, 20_000] {
            let nested = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
            let text = "{\"format\": 2, \"deep\": \(nested)}"
            try await expectRefused(.keyFileCorrupt, containing: ["nesting deeper than 4"], bytes: Data(text.utf8))
            // The cost: the fastest of 20 parses, one no other work on a loaded machine
            // interrupted, is far below what a parser quadratic in the depth takes at 20,000
            // (hundreds of milliseconds).
            var fastest = Duration.seconds(60)
            for _ in 0..<20 {
                let start = ContinuousClock.now
                _ = try? Data(text.utf8).withUnsafeBytes { try KeyFile(jsonBytes: $0, source: "deep") }
                fastest = min(fastest, ContinuousClock.now - start)
            }
            #expect(fastest < .milliseconds(50), "depth \(depth): the fastest parse took \(fastest)")
        }
    }

    @Test("a .key over 64 KiB is refused without being parsed, untouched")
    func oversize() async throws {
        var data = try sampleKeyFile().jsonData()
        data.append(Data(repeating: UInt8(ascii: " "), count: 64 * 1024))
        try await expectRefused(.keyFileCorrupt, containing: ["64 KiB"], bytes: data)
    }

    @Test("a missing .key is its own error")
    func missing() async throws {
        let directory = try TemporaryDirectory()
        await expectError(.keyFileMissing) {
            _ = try KeyFile.read(from: directory.file("absent.key"))
        }
    }

    @Test("the key check is the first 16 bytes of HMAC-SHA256(DEK, \"dbkey key check v1\")")
    func keyCheckValue() {
        // Computed independently: python3 -c 'import hmac,hashlib;print(hmac.new(bytes(range(32)),
        // b"dbkey key check v1",hashlib.sha256).digest()[:16].hex())'
        let key = secureBuffer(hex: (0..<32).map { String(format: "%02x", $0) }.joined())
        let check = KeyCheck(for: key)
        #expect(check.bytes.map { String(format: "%02x", $0) }.joined() == Self.expectedKeyCheckHex)
        #expect(check.matches(key))
        #expect(!check.matches(secureBuffer(hex: String(repeating: "00", count: 32))))
    }

    static let expectedKeyCheckHex = "d4582da86548e7ba313a6c0290661919"
}

extension KeyFileTests {
    @Test(
        "a date is the whole text: trailing or leading junk is refused, ISO 8601 with fractions and offsets is read",
        arguments: [
            ("2024-01-15T10:30:00Z", true), ("2024-01-15T10:30:00.123Z", true), ("2024-01-15T10:30:00+02:00", true),
            ("2024-01-15T10:30:00Zjunk", false), ("2024-01-15T10:30:00Z ", false), (" 2024-01-15T10:30:00Z", false),
            ("2024-01-15T10:30:00Z\n", false), ("2024-01-15T10:30:00", false), ("2024-01-15", false),
        ])
    func strictDates(text: String, valid: Bool) throws {
        let object: [String: Any] = [
            "encrypted_dek": "AQID", "kek_id": "local:0011223344556677", "version": 1, "created_at": text,
            "rotated_at": NSNull(), "encryption_context": [String: String](), "dek_spec": "AES_256",
        ]
        let data = try JSONSerialization.data(withJSONObject: object)
        let parsed = Result { try data.withUnsafeBytes { try KeyFile(jsonBytes: $0, source: "test.key") } }
        if valid {
            #expect(throws: Never.self) { try parsed.get() }
        } else {
            #expect((parsed.error as? DBKeyError)?.code == .keyFileCorrupt, "\(text) was taken")
        }
    }
}
