import Foundation
import Testing

@testable import SQLCipherKeyManager
@testable import SQLCipherKeyManagerPKCS11

@Suite("PKCS#11 provider against SoftHSM2", .tags(.pkcs11))
struct Pkcs11KmsTests {
    let context: EncryptionContext = ["purpose": "hsm-test", "tenant": "t-5"]

    @Test("init → sql → rotate → rewrap HSM → local → HSM, the database intact at each step")
    func lifecycle() async throws {
        try await SoftHSM.exclusively {
            let hsm = try SoftHSM.provider()
            let database = try await TestDatabase(rows: 100, kms: hsm, kekId: try SoftHSM.kekId(), context: context)
            let manager = database.manager()
            #expect(try manager.load().kms == "pkcs11")
            #expect(try manager.load().kekId == (try SoftHSM.kekId()))
            #expect(try await manager.rotateKey().version == 2)
            try await database.expectIntact()

            let local = try localKms()
            let toLocal = try await manager.rewrap(to: local, kekId: LocalKms.defaultKekName)
            #expect(toLocal.kms == "local")
            try await database.expectIntact(database.manager(kms: local))
            let back = try await database.manager(kms: local).rewrap(to: hsm, kekId: try SoftHSM.kekId())
            #expect(back.kms == "pkcs11" && back.version == 2)
            try await database.expectIntact(database.manager(kms: try SoftHSM.provider()))
        }
    }

    @Test("the module stays loaded and initialised after every provider using it is released, and works for the next")
    func moduleOutlivesProviders() async throws {
        try await SoftHSM.exclusively {
            let path = try SoftHSM.module()
            do {
                let hsm = try SoftHSM.provider()
                _ = try await hsm.generateDataKey(kekId: try SoftHSM.kekId(), context: context)
            }
            // Every provider is gone: the module is the same object, never finalised or reloaded.
            let first = try Pkcs11Module.shared(path: path)
            let second = try SoftHSM.provider()
            let dataKey = try await second.generateDataKey(kekId: try SoftHSM.kekId(), context: context)
            #expect(try Pkcs11Module.shared(path: path) === first)
            let unwrapped = try await second.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: context)
            #expect(unwrapped == dataKey.plaintext)
        }
    }

    @Test("a key deleted from the token is reported as key not found; the files are untouched")
    func deletedKey() async throws {
        try await SoftHSM.exclusively {
            let label = try await SoftHSM.createKey()
            let database = try await TestDatabase(
                rows: 20, kms: try SoftHSM.provider(), kekId: try SoftHSM.kekId(object: label))
            try await SoftHSM.deleteKey(label)
            let keyBefore = try contents(database.path + ".key")
            let databaseBefore = try contents(database.path)
            await expectError(.kmsKeyNotFound, containing: [label]) {
                _ = try await database.manager(kms: try SoftHSM.provider()).open()
            }
            #expect(try contents(database.path + ".key") == keyBefore)
            #expect(try contents(database.path) == databaseBefore)
        }
    }

    @Test("an extractable key is refused as a KEK")
    func extractableKeyRefused() async throws {
        try await SoftHSM.exclusively {
            let label = try await SoftHSM.createKey(extractable: true)
            await expectError(.invalidConfiguration, containing: ["can leave the token"]) {
                _ = try await SoftHSM.provider().generateDataKey(
                    kekId: try SoftHSM.kekId(object: label), context: context)
            }
        }
    }

    @Test("a missing token, an unloadable module, a library that is not PKCS#11: each named in its error")
    func configurationErrors() async throws {
        try await SoftHSM.exclusively {
            await expectError(.kmsKeyNotFound, containing: ["no-such-token", "\"\(try SoftHSM.token())\""]) {
                _ = try await SoftHSM.provider().health(kekId: "token=no-such-token;object=k")
            }
            let pin = try Passphrase.fromText("1234")
            for (path, fragment) in [
                ("/nonexistent/libnothing.so", "Cannot load the PKCS#11 module /nonexistent/libnothing.so"),
                ("libsofthsm2.so", "absolute path"),
                (try sqlcipherLibrary(), "is not a PKCS#11 module"),
            ] {
                let error = #expect(throws: DBKeyError.self, "\(path)") {
                    try Pkcs11Kms(modulePath: path, pin: pin, logger: silentLogger)
                }
                #expect(error?.code == .invalidConfiguration)
                #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "")")
            }
            let noPin = #expect(throws: DBKeyError.self) {
                try Pkcs11Kms.fromEnvironment([Pkcs11Kms.moduleVariable: try SoftHSM.module()], logger: silentLogger)
            }
            #expect(noPin?.code == .kmsAccessDenied)
        }
    }

    @Test("twenty concurrent unwraps through one provider share its session one at a time")
    func concurrentUse() async throws {
        try await SoftHSM.exclusively {
            let kms = try SoftHSM.provider()
            let dataKey = try await kms.generateDataKey(kekId: try SoftHSM.kekId(), context: context)
            let context = context
            try await withThrowingTaskGroup(of: Bool.self) { group in
                for _ in 0..<20 {
                    group.addTask {
                        try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: context)
                            == dataKey.plaintext
                    }
                }
                for try await matched in group { #expect(matched) }
            }
        }
    }

    @Test(
        "interop: python-pkcs11 unwraps our wrap on the same token, and the key opens the database in the sqlcipher shell"
    )
    func pythonUnwrapsOurs() async throws {
        try await SoftHSM.exclusively {
            let database = try await TestDatabase(
                rows: 30, kms: try SoftHSM.provider(), kekId: try SoftHSM.kekId(), context: context)
            let keyFile = try database.manager().load()
            let answer = try await SoftHSM.python([
                "op": "unwrap", "blob": keyFile.encryptedDek.encoded,
                "context_hex": context.canonicalEncoding.map { String(format: "%02x", $0) }.joined(),
            ])
            let plaintext = secureBuffer(hex: try #require(answer["plaintext_hex"]))
            #expect(plaintext == (try await database.currentKey()))
            #expect(try await sqlcipherShellOpens(database.path, key: plaintext))
        }
    }

    @Test("interop: a wrap made by python-pkcs11 unwraps here; another context is refused")
    func oursUnwrapsPython() async throws {
        try await SoftHSM.exclusively {
            let key = try SecureBuffer.random(count: 32)
            let answer = try await SoftHSM.python([
                "op": "wrap", "plaintext_hex": hex(key),
                "context_hex": context.canonicalEncoding.map { String(format: "%02x", $0) }.joined(),
            ])
            let wrapped = WrappedDataKey(encoded: try #require(answer["blob"]))
            let kms = try SoftHSM.provider()
            #expect(try await kms.decrypt(wrapped, kekId: try SoftHSM.kekId(), context: context) == key)
            await expectError(.ciphertextInvalid) {
                _ = try await kms.decrypt(wrapped, kekId: try SoftHSM.kekId(), context: ["purpose": "other"])
            }
        }
    }

    @Test("RFC 7512 key names: percent-decoding, canonical form, and no PIN in the URI")
    func keyNames() throws {
        let name = try Pkcs11KeyName("token=My%20Token;object=db%3Bkek;type=secret-key")
        #expect(name.tokenLabel == "My Token" && name.objectLabel == "db;kek")
        #expect(name.description == "token=My%20Token;object=db%3Bkek")
        #expect(try Pkcs11KeyName(name.description) == name)
        #expect(try Pkcs11KeyName("token=t;object=o;serial=42").serial == "42")
        for (invalid, fragment) in [
            ("token=t;object=o;pin-value=1234", "must not carry the PIN"),
            ("token=t", "must name a token and an object"),
            ("token=t;object=o;type=private-key", "secret-key"),
            ("token=t;object=o;color=red", "unknown or repeated"),
            ("token=t;token=u;object=o", "unknown or repeated"),
            ("token=t;object", "NAME=VALUE"),
        ] {
            let error = #expect(throws: DBKeyError.self, "\(invalid)") { try Pkcs11KeyName(invalid) }
            #expect(error?.message.contains(fragment) == true, "\(invalid): \(error?.message ?? "")")
            #expect(error?.message.contains("1234") == false)
        }
    }
}

/// The SQLCipher shared library this package links: a real library that is not a PKCS#11 module.
private func sqlcipherLibrary() throws -> String {
    let candidates = ["/usr/lib/x86_64-linux-gnu/libsqlcipher.so.0", "/usr/lib/aarch64-linux-gnu/libsqlcipher.so.0"]
    return try #require(candidates.first { FileManager.default.fileExists(atPath: $0) })
}
