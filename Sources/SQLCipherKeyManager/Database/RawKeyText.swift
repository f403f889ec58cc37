/// Builds SQLCipher's raw-key text, `x'` + 64 hex digits + `'`, inside a ``SecureBuffer``.
///
/// SQLCipher treats anything that is not exactly this shape (62 or 66 digits, a missing quote)
/// as a passphrase and silently runs it through PBKDF2, so the text is built here and checked,
/// never assembled with string interpolation.
package enum RawKeyText {
    /// The size of a data key: 256 bits.
    package static let keyByteCount = 32
    /// The size of the text: `x'`, 64 hex digits, `'`.
    package static let textByteCount = 2 + 2 * keyByteCount + 1

    /// The raw-key text for a 32-byte data key.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` when the key is not 32 bytes.
    package static func make(for key: SecureBuffer) throws -> SecureBuffer {
        guard key.count == keyByteCount else {
            throw DBKeyError(
                .invalidConfiguration,
                "A data key must be \(keyByteCount) bytes (AES-256); this one has \(key.count)."
            )
        }
        return key.withUnsafeBytes { keyBytes in
            SecureBuffer(count: textByteCount) { text in
                text[0] = UInt8(ascii: "x")
                text[1] = UInt8(ascii: "'")
                for (index, byte) in keyBytes.enumerated() {
                    text[2 + 2 * index] = hexDigit(byte >> 4)
                    text[3 + 2 * index] = hexDigit(byte & 0x0F)
                }
                text[textByteCount - 1] = UInt8(ascii: "'")
            }
        }
    }

    /// A lowercase hex digit for a nibble, computed without a table or a branch so that the time
    /// taken does not depend on the key.
    private static func hexDigit(_ nibble: UInt8) -> UInt8 {
        let value = Int32(nibble)
        // (9 - value) >> 31 is all ones exactly when value > 9; 0x27 moves ':' to 'a'.
        return UInt8(truncatingIfNeeded: value + 0x30 + (((9 - value) >> 31) & 0x27))
    }
}
