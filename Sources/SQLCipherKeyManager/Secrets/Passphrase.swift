import Foundation
import SystemPackage

/// Reads a secret the user types or stores — the passphrase of an older SQLCipher database, a
/// Vault token, a PKCS#11 PIN — into secure memory.
///
/// Such secrets come from an environment variable, a file or standard input — never from a
/// command line, which other users can read in `/proc`. One trailing newline is dropped.
public enum Passphrase {
    /// The largest passphrase accepted.
    public static let maximumLength = 4096

    /// A passphrase from text, such as an environment variable's value.
    public static func fromText(_ text: String, kind: String = "passphrase") throws -> SecureBuffer {
        var text = text
        let buffer = text.withUTF8 { SecureBuffer(copying: UnsafeRawBufferPointer($0)) }
        return try trimmed(buffer, kind: kind)
    }

    /// A passphrase from a file that only its owner can read (the same checks as key files).
    ///
    /// - Parameters:
    ///   - path: The file's path.
    ///   - kind: What the secret is, for messages (`passphrase`, `Vault token`).
    /// - Throws: ``DBKeyError/Code-swift.struct/keyFileInsecure`` for a file others can read,
    ///   ``DBKeyError/Code-swift.struct/keyFileMissing`` when it does not exist.
    public static func fromFile(_ path: String, kind: String = "passphrase") throws -> SecureBuffer {
        try trimmed(
            ProtectedFile.read(at: path, maxSize: maximumLength, kind: "\(kind) file", missingCode: .keyFileMissing),
            kind: kind)
    }

    /// A passphrase from standard input, read to its end.
    public static func fromStandardInput() throws -> SecureBuffer {
        var length = 0
        let buffer = try SecureBuffer(count: maximumLength + 1) { destination in
            while length < destination.count {
                let count = read(STDIN_FILENO, destination.baseAddress! + length, destination.count - length)
                if count == 0 { break }
                if count < 0 {
                    let error = Errno(rawValue: Platform.errno)
                    if error == .interrupted { continue }
                    throw DBKeyError(.io, "Cannot read the passphrase from standard input.", errno: error)
                }
                length += count
            }
        }
        guard length <= maximumLength else {
            throw DBKeyError(
                .invalidConfiguration, "The passphrase on standard input is longer than \(maximumLength) bytes.")
        }
        return try trimmed(
            buffer.withUnsafeBytes { SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(length))) },
            kind: "passphrase")
    }

    private static func trimmed(_ buffer: SecureBuffer, kind: String) throws -> SecureBuffer {
        let result = buffer.withUnsafeBytes { bytes -> SecureBuffer in
            var end = bytes.count
            if end > 0, bytes[end - 1] == UInt8(ascii: "\n") { end -= 1 }
            if end > 0, bytes[end - 1] == UInt8(ascii: "\r") { end -= 1 }
            return SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: bytes.prefix(end)))
        }
        guard result.count > 0 else {
            throw DBKeyError(.invalidConfiguration, "The \(kind) is empty.")
        }
        return result
    }
}
