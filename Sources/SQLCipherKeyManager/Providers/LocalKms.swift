import Foundation
import Logging
import SystemPackage

/// The embedded key management service: data keys wrapped under a 32-byte master key kept on
/// this machine.
///
/// The master key comes from, in order:
/// 1. `DBKEY_MASTER_KEY`: base64 of 32 bytes;
/// 2. the file named by `DBKEY_MASTER_KEY_FILE` (base64, owner-only permissions);
/// 3. `~/.config/dbkey/master.key`, created with mode 0600 on first use.
///
/// New keys are wrapped under that master key. The files named by
/// `DBKEY_OTHER_MASTER_KEY_FILES` (paths separated by `:`) add master keys that unwrap and wrap
/// the keys of their own `kek_id`: what a key slot under a second local master key needs (see
/// ``KeySlot``).
///
/// The KEK id is `local:` followed by the first 8 bytes of SHA-256(master key) in hex, so a
/// `.key` file names the master key it needs without revealing it. Wrapped keys use a public
/// format: base64( `0x01` ‖ nonce(12) ‖ AES-256-GCM ciphertext(32) ‖ tag(16) ), with additional
/// data `"dbkey-local-v1"` ‖ `0x00` ‖ ``EncryptionContext/canonicalEncoding``.
///
/// ```swift
/// let kms = try LocalKms.fromEnvironment(logger: logger)
/// let manager = DatabaseKeyManager(databasePath: "app.db", kms: kms, logger: logger)
/// ```
///
/// Losing the master key loses every database wrapped under it: back it up.
public struct LocalKms: KeyManagementService {
    /// `local`.
    public let providerName = "local"
    /// `local:` and the master key's fingerprint.
    public let kekId: String

    /// The KEK name that means "the configured master key", as in `local://default`.
    public static let defaultKekName = "default"
    /// The environment variable holding the base64 master key.
    public static let masterKeyVariable = "DBKEY_MASTER_KEY"
    /// The environment variable naming a file that holds the base64 master key.
    public static let masterKeyFileVariable = "DBKEY_MASTER_KEY_FILE"
    /// The environment variable naming further master key files, separated by `:`.
    public static let otherMasterKeyFilesVariable = "DBKEY_OTHER_MASTER_KEY_FILES"

    private let masterKey: SecureBuffer
    /// Further master keys by KEK id.
    private let otherMasterKeys: [String: SecureBuffer]
    private static let wrapping = AESGCMKeyWrap(label: "dbkey-local-v1")

    /// Creates the provider from a 32-byte master key, and further master keys that serve
    /// the keys wrapped under them.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` when a key is not 32 bytes.
    public init(masterKey: SecureBuffer, otherMasterKeys: [SecureBuffer] = []) throws {
        for key in [masterKey] + otherMasterKeys where key.count != 32 {
            throw DBKeyError(
                .invalidConfiguration, "A local master key must be 32 bytes; this one has \(key.count).")
        }
        self.masterKey = masterKey
        self.kekId = LocalKms.kekId(for: masterKey)
        self.otherMasterKeys = Dictionary(
            otherMasterKeys.map { (LocalKms.kekId(for: $0), $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// Claims seven-field `.key` files whose `kek_id` starts with `local:`.
    public func claimsLegacyKekId(_ kekId: String) -> Bool { kekId.hasPrefix("local:") }

    /// Makes the local provider from the environment; `local:///PATH` names the master key in
    /// the file at `/PATH` (for rewrapping to a new master key).
    public static let factory = KmsProviderFactory(
        providerName: "local",
        uriScheme: "local",
        uriForms: ["local://default", "local:///PATH"],
        help:
            "the master key from $DBKEY_MASTER_KEY, the file named by $DBKEY_MASTER_KEY_FILE, or ~/.config/dbkey/master.key; local:///PATH names a master key file",
        claimsLegacyKekId: { $0.hasPrefix("local:") },
        target: { keyPart, environment, logger in
            // Named as a KEK to wrap under: the configured master key, created if there is none.
            if keyPart == defaultKekName {
                return KekTarget(provider: try fromEnvironment(environment, logger: logger), kekId: defaultKekName)
            }
            guard keyPart.hasPrefix("/") else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "\"local://\(keyPart)\" names no local master key: use local://default (the configured master key) or local:///ABSOLUTE/PATH (a master key file)."
                )
            }
            let fromFile = try fromEnvironment([masterKeyFileVariable: keyPart], logger: logger)
            return KekTarget(provider: fromFile, kekId: defaultKekName)
        },
        // Asked for by a .key's "kms": the master key it was wrapped under must exist already.
        makeProvider: { environment, logger in
            try fromEnvironment(environment, logger: logger, creatingMissingFile: false)
        }
    )

    /// The KEK id of a master key: `local:` + hex of the first 8 bytes of its SHA-256.
    public static func kekId(for masterKey: SecureBuffer) -> String {
        "local:" + KeyedCrypto.sha256(of: masterKey).prefix(8).lowercaseHex
    }

    /// Loads the master key from the environment, or from (or into) the default file.
    ///
    /// - Parameters:
    ///   - environment: The variables to read; the process's environment by default.
    ///   - logger: Receives a warning, with the file's path, when a new master key is created.
    ///   - creatingMissingFile: Whether a missing default file is created with a new master key
    ///     (for a new database); when `false`, its absence is
    ///     ``DBKeyError/Code-swift.struct/keyFileMissing`` and nothing is written.
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for a master key that is
    ///   not base64 of 32 bytes, ``DBKeyError/Code-swift.struct/keyFileInsecure`` for a file
    ///   others can read, ``DBKeyError/Code-swift.struct/keyFileMissing`` when
    ///   `DBKEY_MASTER_KEY_FILE` names no file.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process,
        logger: Logger,
        creatingMissingFile: Bool = true
    ) throws -> LocalKms {
        let others = try (environment[otherMasterKeyFilesVariable] ?? "").split(separator: ":").map {
            try readMasterKeyFile(at: String($0))
        }
        if let inline = environment[masterKeyVariable] {
            var inline = inline
            let text = inline.withUTF8 { SecureBuffer(copying: UnsafeRawBufferPointer($0)) }
            return try LocalKms(
                masterKey: decodeMasterKey(text, source: "$\(masterKeyVariable)"), otherMasterKeys: others)
        }
        if let path = environment[masterKeyFileVariable] {
            return try LocalKms(masterKey: readMasterKeyFile(at: path), otherMasterKeys: others)
        }
        guard let home = environment["HOME"], !home.isEmpty else {
            throw DBKeyError(
                .invalidConfiguration,
                "No master key: set \(masterKeyFileVariable) to a key file, or HOME so that ~/.config/dbkey/master.key can be used."
            )
        }
        let path = defaultMasterKeyPath(home: home)
        do {
            return try LocalKms(masterKey: readMasterKeyFile(at: path), otherMasterKeys: others)
        } catch DBKeyError.Code.keyFileMissing {
            guard creatingMissingFile else {
                throw DBKeyError(
                    .keyFileMissing,
                    "No local master key: \(path) does not exist, and neither \(masterKeyFileVariable) nor \(masterKeyVariable) is set. Point \(masterKeyFileVariable) at the master key this database's key was wrapped under; nothing was created.",
                    path: path)
            }
            return try LocalKms(masterKey: createMasterKeyFile(at: path, logger: logger), otherMasterKeys: others)
        }
    }

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let masterKey = try masterKey(for: kekId)
        let key = try SecureBuffer.random(count: RawKeyText.keyByteCount)
        let wrapped = try LocalKms.wrapping.wrap(key, under: masterKey, context: context)
        return DataKey(plaintext: key, wrapped: wrapped, kekId: LocalKms.kekId(for: masterKey))
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        try LocalKms.wrapping.unwrap(wrapped, under: try masterKey(for: kekId), context: context)
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        try LocalKms.wrapping.wrap(key, under: try masterKey(for: kekId), context: context)
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let clock = ContinuousClock()
        let start = clock.now
        let masterKey = try masterKey(for: kekId)
        // A real round trip through the wrap format proves the key and the crypto work.
        let probe = try SecureBuffer.random(count: RawKeyText.keyByteCount)
        let wrapped = try LocalKms.wrapping.wrap(probe, under: masterKey, context: .empty)
        guard try LocalKms.wrapping.unwrap(wrapped, under: masterKey, context: .empty) == probe else {
            throw DBKeyError(.kmsUnavailable, "The local master key failed a wrap and unwrap round trip.")
        }
        let resolved = kekId == LocalKms.defaultKekName ? self.kekId : kekId
        return KmsHealth(kekId: resolved, keyState: "available", latency: clock.now - start)
    }

    /// The master key of a KEK id: the configured one for its id or `default`, or another
    /// configured master key for its own id.
    private func masterKey(for requested: String) throws -> SecureBuffer {
        if let other = otherMasterKeys[requested] { return other }
        try checkKek(requested)
        return masterKey
    }

    private func checkKek(_ requested: String) throws {
        guard requested == kekId || requested == LocalKms.defaultKekName else {
            guard requested.hasPrefix("local:") else {
                // Not a master key's id at all: a name the local provider does not have.
                throw DBKeyError(
                    .invalidConfiguration,
                    "The local provider has one KEK, its master key: name it \"\(LocalKms.defaultKekName)\" (local://default), or name a master key file by its absolute path (local:///PATH); \"\(requested)\" is neither.",
                    kekId: requested
                )
            }
            throw DBKeyError(
                .kmsKeyNotFound,
                "The data key is wrapped under the local master key \(requested), but the configured master key is \(kekId). Point \(LocalKms.masterKeyFileVariable) (or \(LocalKms.masterKeyVariable)) at the master key this database was created with."
            )
        }
    }

    /// The master key file `environment` names, or the default one; `nil` when the key is
    /// given inline or no home is set.
    static func masterKeyFilePath(environment: ProviderEnvironment) -> String? {
        guard environment[masterKeyVariable] == nil else { return nil }
        return environment[masterKeyFileVariable] ?? environment["HOME"].map { defaultMasterKeyPath(home: $0) }
    }

    private static func defaultMasterKeyPath(home: String) -> String {
        home + "/.config/dbkey/master.key"
    }

    private static func readMasterKeyFile(at path: String) throws -> SecureBuffer {
        let contents = try ProtectedFile.read(
            at: path, maxSize: 1024, kind: "master key file", missingCode: .keyFileMissing)
        return try decodeMasterKey(contents, source: path)
    }

    private static func decodeMasterKey(_ text: SecureBuffer, source: String) throws -> SecureBuffer {
        let key = text.withUnsafeBytes { bytes -> SecureBuffer? in
            // A trailing newline (echo, editors) is fine; nothing else around the base64 is.
            var end = bytes.count
            while end > 0, [UInt8(ascii: "\n"), UInt8(ascii: "\r")].contains(bytes[end - 1]) {
                end -= 1
            }
            return SecureBuffer.decodingBase64(UnsafeRawBufferPointer(rebasing: bytes[..<end]))
        }
        guard let key, key.count == 32 else {
            throw DBKeyError(
                .invalidConfiguration,
                "The master key in \(source) is not base64 of 32 bytes. Generate one with: head -c 32 /dev/urandom | base64"
            )
        }
        return key
    }

    private static func createMasterKeyFile(at path: String, logger: Logger) throws -> SecureBuffer {
        let directory = FilePath(path).removingLastComponent()
        try createDirectories(directory)
        let key = try SecureBuffer.random(count: 32)
        let text = key.base64Encoded()
        let line = SecureBuffer(count: text.count + 1) { line in
            text.withUnsafeBytes { line.copyMemory(from: $0) }
            line[text.count] = UInt8(ascii: "\n")
        }
        do {
            try line.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path, replacing: false) }
        } catch let error as DBKeyError where error.errno == .fileExists {
            // Another process created it first: use theirs.
            return try readMasterKeyFile(at: path)
        }
        logger.warning(
            "Created a new local master key. Back it up: losing it loses every database whose key it wraps.",
            metadata: ["event": "master-key.created", "path": "\(path)", "kek_id": "\(kekId(for: key))"]
        )
        return key
    }

    private static func createDirectories(_ directory: FilePath) throws {
        var current = FilePath(root: directory.root)
        for component in directory.components {
            current.append(component)
            if mkdir(current.string, 0o700) != 0, errno != EEXIST {
                throw DBKeyError.io(Errno(rawValue: errno), "create the directory", current.string)
            }
        }
    }
}
