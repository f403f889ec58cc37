extension Sequence where Element == UInt8 {
    /// Lowercase hex of non-secret bytes: digests, fingerprints, signatures. Key material is
    /// hex-encoded only inside a ``SecureBuffer`` (see `RawKeyText`).
    package var lowercaseHex: String {
        map { byte in
            let digits = Array("0123456789abcdef".utf8)
            return String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]], as: UTF8.self)
        }.joined()
    }
}
