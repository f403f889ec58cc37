import CTSS2
import Foundation
import Logging
import SQLCipherKeyManager
import Synchronization

/// A data key sealed to this device's TPM 2.0 under its storage root key (the persistent handle
/// `0x81000001`, made if absent), optionally bound to PCRs: the database opens on this device
/// only, with no network.
///
/// The KEK is named `tpm2://` or `tpm2://?pcrs=sha256:0,7`, recorded as `0x81000001` or
/// `0x81000001?pcrs=sha256:0,7`. The wrapped key is `tpm2:SRK:BLOB`: the first 8 bytes of the
/// SRK's Name in hex (to tell a blob of another TPM from a damaged one), and base64 of the
/// TPM2B_PUBLIC and TPM2B_PRIVATE that `tpm2_create -u -r` writes, so `tpm2_load` and
/// `tpm2_unseal` open what DBKey sealed, and DBKey what they sealed (`tpm2:BLOB`). What is sealed is the data key followed by SHA-256 of the encryption
/// context's canonical encoding, checked on unseal.
///
/// The TPM is reached through the TSS's TCTI loader: `DBKEY_TPM_TCTI`, else `TPM2TOOLS_TCTI`,
/// else `TCTI` (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`), else the loader's
/// default.
///
/// Firmware and boot-loader updates change PCRs: a PCR-bound key then no longer unseals. Use it
/// as a key slot beside a KEK that does not depend on the device's state.
public struct Tpm2Kms: EnvironmentConfigurable {
    /// `tpm2`.
    public let providerName = "tpm2"

    let tcti: String?
    let logger: Logger

    /// One connection to the TPM at a time: without a resource manager, the TPM holds only a few
    /// objects and sessions.
    private static let exclusive = Mutex(())

    /// Creates the provider for the TPM the TCTI configuration names (`nil`: the loader's default).
    public init(tcti: String?, logger: Logger) {
        self.tcti = tcti
        self.logger = logger
    }

    /// Makes the TPM provider from the environment.
    public static let factory = KmsProviderFactory(
        Tpm2Kms.self, providerName: "tpm2", uriScheme: "tpm2", uriForms: ["tpm2://", "tpm2://?pcrs=sha256:0,7"],
        help: "a TPM 2.0 sealed key, through the TCTI in $DBKEY_TPM_TCTI, $TPM2TOOLS_TCTI or $TCTI"
    )

    /// The provider with the TCTI from `DBKEY_TPM_TCTI`, `TPM2TOOLS_TCTI` or `TCTI`.
    public static func fromEnvironment(
        _ environment: ProviderEnvironment = .process, logger: Logger
    ) -> Tpm2Kms {
        let tcti = ["DBKEY_TPM_TCTI", "TPM2TOOLS_TCTI", "TCTI"].lazy.compactMap { environment[$0] }.first {
            !$0.isEmpty
        }
        return Tpm2Kms(tcti: tcti, logger: logger)
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let key = try SecureBuffer.random(count: RawKeyText.keyByteCount)
        let resolved = Tpm2Kms.srkHandle + (try Tpm2Kms.pcrText(kekId))
        return DataKey(plaintext: key, wrapped: try await encrypt(key, kekId: kekId, context: context), kekId: resolved)
    }

    /// The storage root key's persistent handle, as KEK ids record it.
    static let srkHandle = "0x81000001"

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        let pcrs = try Tpm2Kms.pcrMask(kekId)
        let payload = try ContextBoundKey.bind(key, to: context)
        let (name, blob) = try withTPM { esys, srk in
            var buffer = [UInt8](repeating: 0, count: 2048)
            var written = 0
            let rc = payload.withUnsafeBytes { data in
                dbkey_tpm_seal(
                    esys, srk, data.baseAddress!.assumingMemoryBound(to: UInt8.self), data.count, pcrs, &buffer,
                    buffer.count, &written)
            }
            try Tpm2Kms.check(rc, "seal")
            return (try Tpm2Kms.srkTag(esys, srk), Array(buffer.prefix(written)))
        }
        return WrappedDataKey(encoded: "tpm2:\(name):" + Base64.encode(blob))
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        let pcrs = try Tpm2Kms.pcrMask(kekId)
        let parts = wrapped.encoded.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.first == "tpm2", (2...3).contains(parts.count), let blob = Base64.decode(String(parts.last!)),
            !blob.isEmpty
        else {
            throw DBKeyError(.ciphertextInvalid, "The wrapped data key is not a TPM sealed object (tpm2:…).")
        }
        let sealedUnder = parts.count == 3 ? String(parts[1]) : nil
        let payload = try withTPM { esys, srk in
            let tag = try Tpm2Kms.srkTag(esys, srk)
            var written = 0
            var stage: Int32 = 0
            var rc: TSS2_RC = 0
            let buffer = SecureBuffer(count: 128) { output in
                rc = dbkey_tpm_unseal(
                    esys, srk, blob, blob.count, pcrs, output.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    output.count, &written, &stage)
            }
            try Tpm2Kms.unsealError(rc, stage: stage, kekId: kekId, otherTPM: sealedUnder.map { $0 != tag })
            return buffer.withUnsafeBytes {
                SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(written)))
            }
        }
        return try ContextBoundKey.unbind(payload, from: context, what: "The sealed data key")
    }

    public func health(kekId: String) async throws -> KmsHealth {
        _ = try Tpm2Kms.pcrMask(kekId)
        let clock = ContinuousClock()
        let start = clock.now
        try withTPM { _, _ in }
        return KmsHealth(kekId: kekId, keyState: "available", latency: clock.now - start)
    }

    /// A key bound to PCRs may only be a key slot: a firmware or boot-loader update changes the
    /// PCRs, and the database would then open through no KEK at all.
    public func primaryRefusal(kekId: String) -> String? {
        guard let mask = try? Tpm2Kms.pcrMask(kekId), mask != 0 else { return nil }
        return
            "a TPM key bound to PCRs stops unsealing when firmware or the boot loader changes them. Make it a key slot beside another KEK (dbkey slot add DATABASE --kek tpm2://?pcrs=…)."
    }

    // MARK: - The protocol

    /// The first 8 bytes of the SRK's Name, in hex.
    static func srkTag(_ esys: OpaquePointer, _ srk: ESYS_TR) throws -> String {
        var name = [UInt8](repeating: 0, count: 128)
        var written = 0
        try check(dbkey_tpm_srk_name(esys, srk, &name, name.count, &written), "read the storage root key's name")
        return name.prefix(min(written, 8)).map { String(format: "%02x", $0) }.joined()
    }

    /// The `?pcrs=…` part of a KEK id, or `""`.
    static func pcrText(_ kekId: String) throws -> String {
        let mask = try pcrMask(kekId)
        guard mask != 0 else { return "" }
        return "?pcrs=sha256:" + (0..<24).filter { mask & (1 << $0) != 0 }.map(String.init).joined(separator: ",")
    }

    /// The PCRs of a KEK id (`""`, `0x81000001`, either followed by `?pcrs=sha256:0,7`), as a mask.
    static func pcrMask(_ kekId: String) throws -> UInt32 {
        var text = Substring(kekId)
        if text.hasPrefix(srkHandle) { text = text.dropFirst(srkHandle.count) }
        if text.hasPrefix("?") { text = text.dropFirst() }
        guard !text.isEmpty else { return 0 }
        guard text.hasPrefix("pcrs=sha256:") else {
            throw DBKeyError(
                .invalidConfiguration,
                "\"\(kekId)\" is not a TPM KEK: use tpm2:// or tpm2://?pcrs=sha256:0,7 (PCRs 0 to 23 of the SHA-256 bank)."
            )
        }
        var mask: UInt32 = 0
        for item in text.dropFirst("pcrs=sha256:".count).split(separator: ",", omittingEmptySubsequences: false) {
            guard let pcr = UInt32(item), pcr < 24 else {
                throw DBKeyError(.invalidConfiguration, "\"\(item)\" in \(kekId) is not a PCR from 0 to 23.")
            }
            mask |= 1 << pcr
        }
        return mask
    }

    /// Runs `body` with a connection to the TPM and its storage root key, one process-wide at a
    /// time, and closes it after.
    private func withTPM<Result>(_ body: (OpaquePointer, ESYS_TR) throws -> Result) throws -> Result {
        try Tpm2Kms.exclusive.withLock { _ in
            var tctiContext: OpaquePointer?
            var rc = Tss2_TctiLdr_Initialize(tcti, &tctiContext)
            guard rc == TSS2_RC_SUCCESS, let tctiContext else {
                throw DBKeyError(
                    .kmsUnavailable,
                    "No TPM could be reached (\(tcti ?? "the TCTI loader's default")): \(Tpm2Kms.text(rc)).")
            }
            defer {
                var context: OpaquePointer? = tctiContext
                Tss2_TctiLdr_Finalize(&context)
            }
            var esys: OpaquePointer?
            rc = Esys_Initialize(&esys, tctiContext, nil)
            guard rc == TSS2_RC_SUCCESS, let esys else {
                throw DBKeyError(.kmsUnavailable, "The TPM's ESAPI context could not be made: \(Tpm2Kms.text(rc)).")
            }
            defer {
                var context: OpaquePointer? = esys
                Esys_Finalize(&context)
            }
            var srk: ESYS_TR = 0
            rc = dbkey_tpm_srk(esys, &srk)
            try Tpm2Kms.check(rc, "find or make the storage root key at 0x81000001")
            return try body(esys, srk)
        }
    }

    static func text(_ rc: TSS2_RC) -> String {
        Tss2_RC_Decode(rc).map { String(cString: $0) } ?? String(rc, radix: 16)
    }

    static func check(_ rc: TSS2_RC, _ what: String) throws {
        guard rc != TSS2_RC_SUCCESS else { return }
        throw DBKeyError(.kmsUnavailable, "The TPM could not \(what): \(text(rc)).")
    }

    /// Maps a failed unseal: a blob of another TPM (or another SRK) does not load; a changed PCR
    /// fails the policy.
    ///
    /// - Parameter otherTPM: Whether the blob names another SRK than this TPM's; `nil` when it
    ///   names none (a blob of tpm2-tools).
    static func unsealError(_ rc: TSS2_RC, stage: Int32, kekId: String, otherTPM: Bool?) throws {
        guard rc != TSS2_RC_SUCCESS else { return }
        switch stage {
        case 1:
            throw DBKeyError(
                .ciphertextInvalid, "The wrapped key is not a TPM2B_PUBLIC and TPM2B_PRIVATE: \(text(rc)).")
        case 2 where otherTPM == false:
            throw DBKeyError(
                .ciphertextInvalid,
                "The sealed data key was sealed by this TPM but does not load (\(text(rc))): it was altered.")
        case 2:
            throw DBKeyError(
                .kmsKeyNotFound,
                "The sealed data key does not load under this TPM's storage root key (\(text(rc))): it was sealed by another TPM, or the SRK at 0x81000001 was replaced."
            )
        case 4 where rc & 0xBF == 0x9D:  // TPM2_RC_POLICY_FAIL, on whichever session
            throw DBKeyError(
                .kmsAccessDenied,
                "The TPM refused to unseal: the PCRs \(kekId.split(separator: ":").last ?? "") no longer hold the values the key was sealed to (\(text(rc))). Firmware and boot-loader updates change them; open through another key slot and reseal."
            )
        default:
            throw DBKeyError(.kmsUnavailable, "The TPM could not unseal the data key: \(text(rc)).")
        }
    }
}
