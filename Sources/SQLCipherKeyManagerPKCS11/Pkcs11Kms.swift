import CPKCS11
import Foundation
import Logging
import Synchronization
import SQLCipherKeyManager

/// A hardware security module, or any PKCS#11 token: the KEK is a non-extractable AES-256 key
/// on the token, and data keys are wrapped with it by the token (AES-GCM, the encryption
/// context as additional authenticated data).
///
/// The key is named by an RFC 7512 URI, `pkcs11:token=LABEL;object=LABEL`; the module by
/// `DBKEY_PKCS11_MODULE` (an absolute path, loaded with `dlopen`); the user PIN by
/// `DBKEY_PKCS11_PIN_FILE` or `DBKEY_PKCS11_PIN`, never by the URI or a command line.
///
/// ```swift
/// let kms = try Pkcs11Kms.fromEnvironment(logger: logger)
/// let manager = DatabaseKeyManager(
///     databasePath: path, kms: kms,
///     configuration: .init(kekId: "token=app;object=db-kek", encryptionContext: ["purpose": "notes"]),
///     logger: logger)
/// ```
///
/// Data keys come from the token's generator (`C_GenerateRandom`). The wrapped key is base64 of
/// one version byte (1), one mechanism byte (1: `CKM_AES_GCM`), the 12-byte IV (also from the
/// token), then the 32-byte ciphertext and the 16-byte tag; the AAD is
/// ``EncryptionContext/canonicalEncoding``.
///
/// Each provider keeps one logged-in session per token, used by one thread at a time; calls
/// run on a thread of their own, never on Swift's cooperative pool. The module is initialised
/// once per process and kept loaded until the process ends (finalising it while another thread
/// or the process's exit handlers use it crashes it).
public struct Pkcs11Kms: EnvironmentConfigurable {
    /// `pkcs11`.
    public let providerName = "pkcs11"

    /// The variable naming the PKCS#11 module (an absolute path).
    public static let moduleVariable = "DBKEY_PKCS11_MODULE"
    /// The variable naming a file that holds the user PIN (read first).
    public static let pinFileVariable = "DBKEY_PKCS11_PIN_FILE"
    /// The variable holding the user PIN.
    public static let pinVariable = "DBKEY_PKCS11_PIN"

    private let sessions: Sessions
    let logger: Logger

    /// Loads and initialises the module (once per process and path).
    ///
    /// - Parameters:
    ///   - modulePath: The module's absolute path, such as `/usr/lib/softhsm/libsofthsm2.so`.
    ///   - pin: The user PIN, used to log in to each token.
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` naming the path when the
    ///   module cannot be loaded or initialised.
    public init(modulePath: String, pin: SecureBuffer, logger: Logger) throws {
        sessions = Sessions(module: try Pkcs11Module.shared(path: modulePath), pin: pin)
        self.logger = logger
    }

    /// Makes the PKCS#11 provider from the environment (see ``fromEnvironment(_:logger:)``).
    public static let factory = KmsProviderFactory(
        Pkcs11Kms.self, providerName: "pkcs11", uriScheme: "pkcs11", uriForms: ["pkcs11:token=LABEL;object=LABEL"],
        help: "the module from $DBKEY_PKCS11_MODULE; the PIN from $DBKEY_PKCS11_PIN_FILE or $DBKEY_PKCS11_PIN")

    /// Configures the provider from ``moduleVariable`` and ``pinFileVariable`` or
    /// ``pinVariable``.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` without a module,
    ///   ``DBKeyError/Code-swift.struct/kmsAccessDenied`` without a PIN, key-file codes for a
    ///   PIN file others can read.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process,
        logger: Logger
    ) throws -> Pkcs11Kms {
        guard let module = environment[moduleVariable], !module.isEmpty else {
            throw DBKeyError(
                .invalidConfiguration,
                "No PKCS#11 module: set \(moduleVariable) to the module's path (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)."
            )
        }
        let pin: SecureBuffer
        if let path = environment[pinFileVariable], !path.isEmpty {
            pin = try Passphrase.fromFile(path, kind: "PKCS#11 PIN")
        } else if let text = environment[pinVariable], !text.isEmpty {
            pin = try Passphrase.fromText(text, kind: "PKCS#11 PIN")
        } else {
            throw DBKeyError(
                .kmsAccessDenied, "No PKCS#11 PIN: set \(pinFileVariable) to a file holding it (or \(pinVariable)).")
        }
        return try Pkcs11Kms(modulePath: module, pin: pin, logger: logger)
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let name = try Pkcs11KeyName(kekId)
        let session = sessions.session(for: name)
        return try await BlockingExecutor.shared.run(.long) {
            try session.perform { functions, handle in
                let kek = try Pkcs11Kms.findKey(name, session: session, functions, handle)
                let plaintext = try SecureBuffer(count: RawKeyText.keyByteCount) { destination in
                    try session.check(
                        functions.C_GenerateRandom(
                            handle, destination.baseAddress!.assumingMemoryBound(to: UInt8.self),
                            CK_ULONG(destination.count)),
                        "C_GenerateRandom")
                }
                let wrapped = try Pkcs11Kms.wrap(plaintext, kek: kek, context: context, session, functions, handle)
                return DataKey(plaintext: plaintext, wrapped: wrapped, kekId: name.description)
            }
        }
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        let name = try Pkcs11KeyName(kekId)
        guard let blob = wrapped.base64DecodedBytes, blob.count == Pkcs11Kms.blobCount, blob[0] == 1, blob[1] == 1
        else {
            throw DBKeyError(
                .ciphertextInvalid,
                "The wrapped data key is not a PKCS#11 AES-GCM wrap (base64 of version 1, mechanism 1, IV, ciphertext, tag)."
            )
        }
        let session = sessions.session(for: name)
        return try await BlockingExecutor.shared.run(.long) {
            try session.perform { functions, handle in
                let kek = try Pkcs11Kms.findKey(name, session: session, functions, handle)
                return try Pkcs11Kms.unwrap(blob, kek: kek, context: context, session, functions, handle)
            }
        }
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        let name = try Pkcs11KeyName(kekId)
        let session = sessions.session(for: name)
        return try await BlockingExecutor.shared.run(.long) {
            try session.perform { functions, handle in
                let kek = try Pkcs11Kms.findKey(name, session: session, functions, handle)
                return try Pkcs11Kms.wrap(key, kek: kek, context: context, session, functions, handle)
            }
        }
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let name = try Pkcs11KeyName(kekId)
        let session = sessions.session(for: name)
        let clock = ContinuousClock()
        let start = clock.now
        try await BlockingExecutor.shared.run(.long) {
            try session.perform { functions, handle in
                _ = try Pkcs11Kms.findKey(name, session: session, functions, handle)
            }
        }
        return KmsHealth(kekId: name.description, keyState: "available", latency: clock.now - start)
    }

    // MARK: - The token

    static let ivCount = 12
    static let tagCount = 16
    static let blobCount = 2 + ivCount + RawKeyText.keyByteCount + tagCount

    /// Finds the KEK by label and checks that it is a non-extractable AES-256 key that may
    /// encrypt and decrypt.
    static func findKey(
        _ name: Pkcs11KeyName,
        session: Pkcs11Session,
        _ functions: CK_FUNCTION_LIST,
        _ handle: CK_SESSION_HANDLE
    ) throws -> CK_OBJECT_HANDLE {
        var objectClass = CK_OBJECT_CLASS(CKO_SECRET_KEY)
        var label = Array(name.objectLabel.utf8)
        var found = [CK_OBJECT_HANDLE](repeating: 0, count: 2)
        var count = CK_ULONG()
        try withUnsafeMutableBytes(of: &objectClass) { objectClass in
            try label.withUnsafeMutableBytes { label in
                var template = [
                    CK_ATTRIBUTE(
                        type: CK_ATTRIBUTE_TYPE(CKA_CLASS), pValue: objectClass.baseAddress,
                        ulValueLen: CK_ULONG(objectClass.count)),
                    CK_ATTRIBUTE(
                        type: CK_ATTRIBUTE_TYPE(CKA_LABEL), pValue: label.baseAddress, ulValueLen: CK_ULONG(label.count)
                    ),
                ]
                try session.check(
                    functions.C_FindObjectsInit(handle, &template, CK_ULONG(template.count)), "C_FindObjectsInit")
            }
        }
        let result = functions.C_FindObjects(handle, &found, CK_ULONG(found.count), &count)
        _ = functions.C_FindObjectsFinal(handle)
        try session.check(result, "C_FindObjects")
        guard count > 0 else {
            throw DBKeyError(
                .kmsKeyNotFound,
                "No secret key labelled \"\(name.objectLabel)\" on the PKCS#11 token \"\(name.tokenLabel)\" (deleted, or another label?)."
            )
        }
        guard count == 1 else {
            throw DBKeyError(
                .invalidConfiguration,
                "More than one secret key is labelled \"\(name.objectLabel)\" on the token \"\(name.tokenLabel)\"; give the KEK a label of its own."
            )
        }
        let kek = found[0]
        // All six attributes in one call: on a network HSM every call is a round trip.
        let slot = MemoryLayout<CK_ULONG>.stride
        let wanted: [(type: UInt, size: Int)] = [
            (CKA_KEY_TYPE, MemoryLayout<CK_KEY_TYPE>.size), (CKA_VALUE_LEN, MemoryLayout<CK_ULONG>.size),
            (CKA_EXTRACTABLE, 1), (CKA_SENSITIVE, 1), (CKA_ENCRYPT, 1), (CKA_DECRYPT, 1),
        ]
        let values = UnsafeMutableRawBufferPointer.allocate(byteCount: slot * wanted.count, alignment: slot)
        defer { values.deallocate() }
        values.initializeMemory(as: UInt8.self, repeating: 0)
        var template = wanted.enumerated().map { index, attribute in
            CK_ATTRIBUTE(
                type: CK_ATTRIBUTE_TYPE(attribute.type), pValue: values.baseAddress! + index * slot,
                ulValueLen: CK_ULONG(attribute.size))
        }
        try session.check(
            functions.C_GetAttributeValue(handle, kek, &template, CK_ULONG(template.count)), "C_GetAttributeValue")
        let ulong = { (index: Int) in values.load(fromByteOffset: index * slot, as: CK_ULONG.self) }
        let bool = { (index: Int) in values.load(fromByteOffset: index * slot, as: CK_BBOOL.self) }
        guard ulong(0) == CKK_AES, ulong(1) == 32 else {
            throw DBKeyError(
                .invalidConfiguration, "The PKCS#11 key \"\(name.objectLabel)\" is not an AES-256 key.")
        }
        guard bool(2) == CK_FALSE, bool(3) == CK_TRUE else {
            throw DBKeyError(
                .invalidConfiguration,
                "The PKCS#11 key \"\(name.objectLabel)\" can leave the token (CKA_EXTRACTABLE, or not CKA_SENSITIVE); a KEK must not. Create it sensitive and not extractable."
            )
        }
        guard bool(4) == CK_TRUE, bool(5) == CK_TRUE else {
            throw DBKeyError(
                .invalidConfiguration,
                "The PKCS#11 key \"\(name.objectLabel)\" may not encrypt and decrypt (CKA_ENCRYPT, CKA_DECRYPT).")
        }
        return kek
    }

    /// Runs `body` with an AES-GCM mechanism for `iv` and the context as AAD.
    private static func withGCM<Result>(
        iv: [UInt8],
        context: EncryptionContext,
        _ body: (inout CK_MECHANISM) throws -> Result
    ) rethrows -> Result {
        var iv = iv
        var aad = context.canonicalEncoding
        return try iv.withUnsafeMutableBufferPointer { iv in
            try aad.withUnsafeMutableBufferPointer { aad in
                var parameters = CK_GCM_PARAMS(
                    pIv: iv.baseAddress, ulIvLen: CK_ULONG(iv.count), ulIvBits: CK_ULONG(iv.count * 8),
                    pAAD: aad.count > 0 ? aad.baseAddress : nil, ulAADLen: CK_ULONG(aad.count),
                    ulTagBits: CK_ULONG(tagCount * 8))
                return try withUnsafeMutableBytes(of: &parameters) { parameters in
                    var mechanism = CK_MECHANISM(
                        mechanism: CK_MECHANISM_TYPE(CKM_AES_GCM), pParameter: parameters.baseAddress,
                        ulParameterLen: CK_ULONG(parameters.count))
                    return try body(&mechanism)
                }
            }
        }
    }

    static func wrap(
        _ key: SecureBuffer,
        kek: CK_OBJECT_HANDLE,
        context: EncryptionContext,
        _ session: Pkcs11Session,
        _ functions: CK_FUNCTION_LIST,
        _ handle: CK_SESSION_HANDLE
    ) throws -> WrappedDataKey {
        var iv = [UInt8](repeating: 0, count: ivCount)
        try session.check(functions.C_GenerateRandom(handle, &iv, CK_ULONG(ivCount)), "C_GenerateRandom")
        var sealed = [UInt8](repeating: 0, count: RawKeyText.keyByteCount + tagCount)
        var sealedCount = CK_ULONG(sealed.count)
        try withGCM(iv: iv, context: context) { mechanism in
            try session.check(functions.C_EncryptInit(handle, &mechanism, kek), "C_EncryptInit")
            try key.withUnsafeBytes { key in
                try session.check(
                    functions.C_Encrypt(
                        handle, UnsafeMutablePointer(mutating: key.baseAddress!.assumingMemoryBound(to: UInt8.self)),
                        CK_ULONG(key.count), &sealed, &sealedCount),
                    "C_Encrypt")
            }
        }
        guard sealedCount == CK_ULONG(sealed.count) else {
            throw DBKeyError(.kmsUnavailable, "The PKCS#11 token returned \(sealedCount) bytes for an AES-GCM wrap.")
        }
        return WrappedDataKey(encoded: Base64.encode([1, 1] + iv + sealed))
    }

    static func unwrap(
        _ blob: [UInt8],
        kek: CK_OBJECT_HANDLE,
        context: EncryptionContext,
        _ session: Pkcs11Session,
        _ functions: CK_FUNCTION_LIST,
        _ handle: CK_SESSION_HANDLE
    ) throws -> SecureBuffer {
        var sealed = Array(blob[(2 + ivCount)...])
        var openedCount = CK_ULONG(sealed.count)
        let opened = try withGCM(iv: Array(blob[2..<(2 + ivCount)]), context: context) { mechanism in
            try session.check(functions.C_DecryptInit(handle, &mechanism, kek), "C_DecryptInit")
            // Room for the whole input: some modules ask for it before they strip the tag.
            return try SecureBuffer(count: sealed.count) { destination in
                let result = functions.C_Decrypt(
                    handle, &sealed, CK_ULONG(sealed.count),
                    destination.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    &openedCount)
                // SoftHSM answers a wrong tag with CKR_GENERAL_ERROR.
                guard result != CKR_GENERAL_ERROR else {
                    throw DBKeyError(
                        .ciphertextInvalid,
                        "The PKCS#11 token refused the wrapped key (CKR_GENERAL_ERROR on AES-GCM decrypt): it was altered, belongs to another key, or the encryption context differs."
                    )
                }
                try session.check(result, "C_Decrypt")
            }
        }
        guard openedCount == CK_ULONG(RawKeyText.keyByteCount) else {
            throw DBKeyError(.ciphertextInvalid, "The PKCS#11 wrap holds \(openedCount) bytes, not a 32-byte data key.")
        }
        return opened.withUnsafeBytes { SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(32))) }
    }
}

/// The sessions of one provider (and its copies): one per token, closed when the provider goes.
private final class Sessions: Sendable {
    let module: Pkcs11Module
    let pin: SecureBuffer
    private let byToken = Mutex<[String: Pkcs11Session]>([:])

    init(module: Pkcs11Module, pin: SecureBuffer) {
        self.module = module
        self.pin = pin
    }

    func session(for name: Pkcs11KeyName) -> Pkcs11Session {
        byToken.withLock { sessions in
            let token = "\(name.tokenLabel);\(name.serial ?? "")"
            if let session = sessions[token] { return session }
            let session = Pkcs11Session(module: module, token: name, pin: pin)
            sessions[token] = session
            return session
        }
    }
}
