import Foundation
import Testing

@testable import SQLCipherKeyManager

@Suite("Local provider", .tags(.core))
struct LocalKmsTests {
    let context: EncryptionContext = ["purpose": "medical-db", "environment": "production", "é": "ü"]

    @Test("Python's cryptography unwraps our wrapped key, following the published format")
    func pythonUnwrapsOurs() async throws {
        let kms = try localKms()
        let dataKey = try await kms.generateDataKey(kekId: "default", context: context)
        let answer = try await pythonLocalKms([
            "op": "unwrap", "master_key": testMasterKeyBase64, "wrapped": dataKey.wrapped.encoded,
            "context": context.dictionary,
        ])
        #expect(answer["dek_hex"] == hex(dataKey.plaintext))
    }

    @Test("we unwrap a key Python's cryptography wrapped, and its KEK id agrees with ours")
    func weUnwrapPythons() async throws {
        let kms = try localKms()
        let dek = try SecureBuffer.random(count: 32)
        let wrapped = try await pythonLocalKms([
            "op": "wrap", "master_key": testMasterKeyBase64, "dek_hex": hex(dek), "context": context.dictionary,
        ])
        let unwrapped = try await kms.decrypt(
            WrappedDataKey(encoded: try #require(wrapped["wrapped"])), kekId: kms.kekId, context: context)
        #expect(unwrapped == dek)
        let kekId = try await pythonLocalKms(["op": "kek_id", "master_key": testMasterKeyBase64])
        #expect(kekId["kek_id"] == kms.kekId)
    }

    @Test("the KEK id is local: and 16 hex digits of SHA-256 of the master key")
    func kekIdShape() async throws {
        let kms = try localKms()
        // SHA-256 of the bytes 0x00…0x1f starts 630dcd2966c4336691125448bbb25b4ff412a49c732db2c8abc1b8581bd710dd.
        #expect(kms.kekId == "local:630dcd2966c43366")
    }

    @Test("a different master key is refused as KMS key not found, naming both KEK ids")
    func wrongMasterKey() async throws {
        let kms = try localKms()
        let dataKey = try await kms.generateDataKey(kekId: "default", context: context)
        let other = try localKms(masterKeyBase64: Data(repeating: 7, count: 32).base64EncodedString())
        await expectError(.kmsKeyNotFound, containing: [dataKey.kekId, other.kekId]) {
            _ = try await other.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: context)
        }
    }

    @Test("master keys that are not base64 of 32 bytes are refused with advice")
    func invalidMasterKeys() async {
        for bad in [
            "", "not base64", Data(repeating: 1, count: 16).base64EncodedString(),
            Data(repeating: 1, count: 33).base64EncodedString(),
        ] {
            await expectError(.invalidConfiguration, containing: ["head -c 32"]) {
                _ = try localKms(masterKeyBase64: bad)
            }
        }
    }

    @Test("a master key file is read with a trailing newline, and refused when others can read it")
    func masterKeyFile() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("master.key")
        _ = FileManager.default.createFile(
            atPath: path, contents: Data((testMasterKeyBase64 + "\n").utf8), attributes: [.posixPermissions: 0o600])
        let kms = try LocalKms.fromEnvironment([LocalKms.masterKeyFileVariable: path], logger: silentLogger)
        #expect(kms.kekId == (try localKms()).kekId)

        chmod(path, 0o644)
        await expectError(.keyFileInsecure, containing: ["chmod 600"]) {
            _ = try LocalKms.fromEnvironment([LocalKms.masterKeyFileVariable: path], logger: silentLogger)
        }
        await expectError(.keyFileMissing) {
            _ = try LocalKms.fromEnvironment(
                [LocalKms.masterKeyFileVariable: directory.file("absent")], logger: silentLogger)
        }
    }

    @Test("the default master key is created 0600 in a 0700 directory on first use, logged, then reused")
    func defaultMasterKeyCreated() async throws {
        let home = try TemporaryDirectory()
        let logs = LogCapture()
        let first = try LocalKms.fromEnvironment(["HOME": home.path], logger: logs.logger)
        let path = home.path + "/.config/dbkey/master.key"
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let directoryAttributes = try FileManager.default.attributesOfItem(atPath: home.path + "/.config/dbkey")
        #expect((directoryAttributes[.posixPermissions] as? Int) == 0o700)
        #expect(logs.lines.contains { $0.contains("warning") && $0.contains(path) && $0.contains("Back it up") })

        let second = try LocalKms.fromEnvironment(["HOME": home.path], logger: silentLogger)
        #expect(second.kekId == first.kekId)
        // The log names the file, never the key.
        let fileText = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .newlines)
        #expect(!logs.lines.joined().contains(fileText))
    }

    @Test("altering any one of the 61 bytes of a local wrapped key is refused as invalid ciphertext")
    func everyByteAuthenticated() async throws {
        let kms = try localKms()
        let dataKey = try await kms.generateDataKey(kekId: "default", context: context)
        let bytes = try #require(dataKey.wrapped.base64DecodedBytes)
        #expect(bytes.count == 61)
        for index in bytes.indices {
            var altered = bytes
            altered[index] ^= 0x80
            await expectError(.ciphertextInvalid) {
                _ = try await kms.decrypt(
                    WrappedDataKey(encoded: Data(altered).base64EncodedString()), kekId: kms.kekId, context: context)
            }
        }
    }
}
