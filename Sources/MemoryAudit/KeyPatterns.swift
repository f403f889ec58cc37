import SQLCipherKeyManager

/// The forms a key can take in memory, made straight from secure memory and masked: no clear
/// copy is ever built.
enum KeyPatterns {
    /// The key raw, as lowercase hex (SQLCipher's keyspec is the key's hex followed by the
    /// salt's) and uppercase hex; with `base64`, also the base64 a master key file holds (its
    /// first 43 characters, before the padding).
    static func masked(_ name: String, _ key: SecureBuffer, base64: Bool = false) -> [MemoryScanner.MaskedPattern] {
        let mask = MemoryScanner.mask
        var patterns = key.withUnsafeBytes { bytes -> [MemoryScanner.MaskedPattern] in
            let digits: (UInt8, UInt8) -> UInt8 = { nibble, letterBase in
                nibble < 10 ? 0x30 + nibble : letterBase + nibble - 10
            }
            let raw = bytes.map { $0 ^ mask }
            let lower = bytes.flatMap { [digits($0 >> 4, 0x61) ^ mask, digits($0 & 0x0F, 0x61) ^ mask] }
            let upper = bytes.flatMap { [digits($0 >> 4, 0x41) ^ mask, digits($0 & 0x0F, 0x41) ^ mask] }
            return [
                .init(name: "\(name)_raw", bytes: raw), .init(name: "\(name)_hex", bytes: lower),
                .init(name: "\(name)_HEX", bytes: upper),
            ]
        }
        if base64 {
            let text = key.base64Encoded()
            let masked = text.withUnsafeBytes { bytes in bytes.prefix(43).map { $0 ^ mask } }
            patterns.append(.init(name: "\(name)_base64", bytes: masked))
        }
        return patterns
    }
}
