import CPKCS11
import Foundation
import Synchronization
import SQLCipherKeyManager

/// A PKCS#11 module loaded with `dlopen` and initialised (`C_Initialize`, with OS locking) once
/// per process and path, and kept for the life of the process.
///
/// It is never finalised or unloaded: the last provider using it can be released on any
/// thread, at any time — also while the process exits and the module's own destructors run —
/// and `C_Finalize` or `dlclose` then crashes the process (seen with SoftHSM2: a provider
/// released by a finished task while `dbkey` exited). The operating system reclaims it at exit.
final class Pkcs11Module: @unchecked Sendable {
    // Immutable after init; the module itself is thread-safe (CKF_OS_LOCKING_OK).
    let path: String
    let functions: CK_FUNCTION_LIST

    private static let loaded = Mutex<[String: Pkcs11Module]>([:])

    /// The module at `path`, loaded and initialised on first use.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` naming the path when it
    ///   cannot be loaded or is not a PKCS#11 module.
    static func shared(path: String) throws -> Pkcs11Module {
        try loaded.withLock { modules in
            if let module = modules[path] { return module }
            let module = try Pkcs11Module(path: path)
            modules[path] = module
            return module
        }
    }

    private init(path: String) throws {
        guard path.hasPrefix("/") else {
            throw DBKeyError(
                .invalidConfiguration,
                "The PKCS#11 module must be named by an absolute path (DBKEY_PKCS11_MODULE=\(path)), so that no search path can substitute another library."
            )
        }
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "unknown reason"
            throw DBKeyError(.invalidConfiguration, "Cannot load the PKCS#11 module \(path): \(reason).")
        }
        typealias GetFunctionList = @convention(c) (UnsafeMutablePointer<CK_FUNCTION_LIST_PTR?>?) -> CK_RV
        var list: CK_FUNCTION_LIST_PTR?
        guard let symbol = dlsym(handle, "C_GetFunctionList"),
            unsafeBitCast(symbol, to: GetFunctionList.self)(&list) == CKR_OK, let list
        else {
            dlclose(handle)
            throw DBKeyError(
                .invalidConfiguration, "\(path) is not a PKCS#11 module: it has no working C_GetFunctionList.")
        }
        var arguments = CK_C_INITIALIZE_ARGS()
        arguments.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        let result = list.pointee.C_Initialize(&arguments)
        guard result == CKR_OK || result == CKR_CRYPTOKI_ALREADY_INITIALIZED else {
            dlclose(handle)
            throw DBKeyError(
                .invalidConfiguration,
                "The PKCS#11 module \(path) failed to initialise (\(Pkcs11Module.name(of: result))). Check its configuration (SOFTHSM2_CONF for SoftHSM)."
            )
        }
        self.path = path
        self.functions = list.pointee
    }

    /// The `CKR_` name of a return value, for messages.
    static func name(of result: CK_RV) -> String {
        let names: [CK_RV: String] = [
            CK_RV(CKR_GENERAL_ERROR): "CKR_GENERAL_ERROR", CK_RV(CKR_ARGUMENTS_BAD): "CKR_ARGUMENTS_BAD",
            CK_RV(CKR_DEVICE_ERROR): "CKR_DEVICE_ERROR", CK_RV(CKR_DEVICE_REMOVED): "CKR_DEVICE_REMOVED",
            CK_RV(CKR_ENCRYPTED_DATA_INVALID): "CKR_ENCRYPTED_DATA_INVALID",
            CK_RV(CKR_ENCRYPTED_DATA_LEN_RANGE): "CKR_ENCRYPTED_DATA_LEN_RANGE",
            CK_RV(CKR_KEY_HANDLE_INVALID): "CKR_KEY_HANDLE_INVALID",
            CK_RV(CKR_KEY_FUNCTION_NOT_PERMITTED): "CKR_KEY_FUNCTION_NOT_PERMITTED",
            CK_RV(CKR_MECHANISM_INVALID): "CKR_MECHANISM_INVALID",
            CK_RV(CKR_MECHANISM_PARAM_INVALID): "CKR_MECHANISM_PARAM_INVALID",
            CK_RV(CKR_PIN_INCORRECT): "CKR_PIN_INCORRECT", CK_RV(CKR_PIN_LOCKED): "CKR_PIN_LOCKED",
            CK_RV(CKR_PIN_EXPIRED): "CKR_PIN_EXPIRED", CK_RV(CKR_PIN_LEN_RANGE): "CKR_PIN_LEN_RANGE",
            CK_RV(CKR_SESSION_HANDLE_INVALID): "CKR_SESSION_HANDLE_INVALID",
            CK_RV(CKR_SESSION_CLOSED): "CKR_SESSION_CLOSED", CK_RV(CKR_TOKEN_NOT_PRESENT): "CKR_TOKEN_NOT_PRESENT",
            CK_RV(CKR_USER_NOT_LOGGED_IN): "CKR_USER_NOT_LOGGED_IN",
            CK_RV(CKR_CRYPTOKI_NOT_INITIALIZED): "CKR_CRYPTOKI_NOT_INITIALIZED",
            CK_RV(CKR_BUFFER_TOO_SMALL): "CKR_BUFFER_TOO_SMALL", CK_RV(CKR_HOST_MEMORY): "CKR_HOST_MEMORY",
            CK_RV(CKR_OPERATION_ACTIVE): "CKR_OPERATION_ACTIVE",
        ]
        return names[result] ?? "CKR 0x" + String(result, radix: 16)
    }
}

/// One logged-in session on one token, used by one thread at a time: every call goes through
/// ``perform(_:)``, which holds a lock. The session is closed when this object goes away.
final class Pkcs11Session: @unchecked Sendable {
    let module: Pkcs11Module
    let key: Pkcs11KeyName
    private let pin: SecureBuffer
    // Guarded by `lock`.
    private let lock = NSLock()
    private var handle: CK_SESSION_HANDLE?
    /// Set when the token refused the PIN: it is not offered again, so that retries cannot
    /// use up the token's tries and lock the PIN.
    private var pinRefusal: DBKeyError?

    init(module: Pkcs11Module, token key: Pkcs11KeyName, pin: SecureBuffer) {
        self.module = module
        self.key = key
        self.pin = pin
    }

    deinit {
        if let handle { _ = module.functions.C_CloseSession(handle) }
    }

    /// Runs `body` with the session, opening and logging in first when needed. A session the
    /// token dropped (removed device, closed session) is forgotten, so the next call opens anew.
    func perform<Result>(_ body: (CK_FUNCTION_LIST, CK_SESSION_HANDLE) throws -> Result) throws -> Result {
        lock.lock()
        defer { lock.unlock() }
        let session = try handle ?? open()
        handle = session
        do {
            return try body(module.functions, session)
        } catch let error as DBKeyError where error.code == .kmsUnavailable {
            _ = module.functions.C_CloseSession(session)
            handle = nil
            throw error
        }
    }

    /// Finds the token, opens a session on it and logs in as the user.
    private func open() throws -> CK_SESSION_HANDLE {
        if let pinRefusal { throw pinRefusal }
        let functions = module.functions
        let slot = try findSlot()
        var session = CK_SESSION_HANDLE()
        try check(functions.C_OpenSession(slot, CK_FLAGS(CKF_SERIAL_SESSION), nil, nil, &session), "C_OpenSession")
        let result = pin.withUnsafeBytes { pin in
            functions.C_Login(
                session, CK_USER_TYPE(CKU_USER),
                UnsafeMutablePointer(mutating: pin.baseAddress?.assumingMemoryBound(to: UInt8.self)),
                CK_ULONG(pin.count))
        }
        guard result == CKR_OK || result == CKR_USER_ALREADY_LOGGED_IN else {
            _ = functions.C_CloseSession(session)
            let error = Pkcs11Session.error(result, "C_Login", key: key)
            if error.code == .kmsAccessDenied {
                pinRefusal = DBKeyError(
                    .kmsAccessDenied,
                    "\(error.message) (The PIN is not offered again by this provider, so that the token does not lock it.)"
                )
            }
            throw error
        }
        return session
    }

    private func findSlot() throws -> CK_SLOT_ID {
        let functions = module.functions
        var count = CK_ULONG()
        try check(functions.C_GetSlotList(CK_BBOOL(CK_TRUE), nil, &count), "C_GetSlotList")
        var slots = [CK_SLOT_ID](repeating: 0, count: Int(count))
        try check(functions.C_GetSlotList(CK_BBOOL(CK_TRUE), &slots, &count), "C_GetSlotList")
        var labels: [String] = []
        for slot in slots.prefix(Int(count)) {
            var info = CK_TOKEN_INFO()
            guard functions.C_GetTokenInfo(slot, &info) == CKR_OK else { continue }
            let label = Pkcs11Session.paddedText(info.label)
            labels.append(label)
            if label == key.tokenLabel, key.serial.map({ $0 == Pkcs11Session.paddedText(info.serialNumber) }) ?? true {
                return slot
            }
        }
        throw DBKeyError(
            .kmsKeyNotFound,
            "No PKCS#11 token labelled \"\(key.tokenLabel)\"\(key.serial.map { " with serial \($0)" } ?? "") in \(module.path); tokens present: \(labels.isEmpty ? "none" : labels.map { "\"\($0)\"" }.joined(separator: ", "))."
        )
    }

    /// A fixed-size, blank-padded PKCS#11 text field as a string.
    private static func paddedText<Field>(_ field: Field) -> String {
        withUnsafeBytes(of: field) { bytes in
            String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: CharacterSet(charactersIn: " \0"))
        }
    }

    func check(_ result: CK_RV, _ function: String) throws {
        guard result == CKR_OK else { throw Pkcs11Session.error(result, function, key: key) }
    }

    /// Maps a PKCS#11 return value to a ``DBKeyError``.
    static func error(_ result: CK_RV, _ function: String, key: Pkcs11KeyName) -> DBKeyError {
        let what = "PKCS#11 \(function) on token \"\(key.tokenLabel)\" failed with \(Pkcs11Module.name(of: result))"
        switch Int(result) {
        case Int(CKR_PIN_INCORRECT), Int(CKR_PIN_LEN_RANGE):
            return DBKeyError(
                .kmsAccessDenied, "\(what): wrong PIN. Check DBKEY_PKCS11_PIN_FILE (or DBKEY_PKCS11_PIN).")
        case Int(CKR_PIN_LOCKED), Int(CKR_PIN_EXPIRED):
            return DBKeyError(
                .kmsAccessDenied, "\(what): the user PIN is locked or expired; the token's SO must reset it.")
        case Int(CKR_KEY_HANDLE_INVALID):
            return DBKeyError(.kmsKeyNotFound, "\(what): the key \"\(key.objectLabel)\" is gone from the token.")
        case Int(CKR_ENCRYPTED_DATA_INVALID), Int(CKR_ENCRYPTED_DATA_LEN_RANGE):
            return DBKeyError(
                .ciphertextInvalid,
                "\(what). The wrapped key was altered, belongs to another key, or the encryption context differs.")
        case Int(CKR_MECHANISM_INVALID), Int(CKR_MECHANISM_PARAM_INVALID), Int(CKR_KEY_FUNCTION_NOT_PERMITTED),
            Int(CKR_KEY_TYPE_INCONSISTENT):
            return DBKeyError(
                .invalidConfiguration,
                "\(what). The key must be an AES-256 secret key allowed to encrypt and decrypt with AES-GCM.")
        case Int(CKR_DEVICE_REMOVED), Int(CKR_TOKEN_NOT_PRESENT), Int(CKR_DEVICE_ERROR), Int(CKR_DEVICE_MEMORY),
            Int(CKR_SESSION_HANDLE_INVALID), Int(CKR_SESSION_CLOSED), Int(CKR_USER_NOT_LOGGED_IN),
            Int(CKR_HOST_MEMORY):
            return DBKeyError(.kmsUnavailable, "\(what). Try again; check that the token is present.")
        default:
            return DBKeyError(.kmsUnavailable, "\(what).")
        }
    }
}
