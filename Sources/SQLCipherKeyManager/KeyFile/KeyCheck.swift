/// The first 16 bytes of HMAC-SHA256(key: data key, message: `"dbkey key check v1"`).
///
/// Stored in the `.key` file, it tells whether a key the KMS returned is the one the file
/// describes, without touching the database and without revealing anything usable about the
/// key.
package struct KeyCheck: Sendable, Hashable, CustomStringConvertible {
    /// The 16 check bytes.
    package let bytes: [UInt8]

    static let byteCount = 16
    private static let message = Array("dbkey key check v1".utf8)

    /// Wraps stored check bytes; `nil` unless there are exactly 16.
    package init?(bytes: [UInt8]) {
        guard bytes.count == KeyCheck.byteCount else { return nil }
        self.bytes = bytes
    }

    /// Computes the check value of a data key.
    package init(for key: SecureBuffer) {
        let mac = KeyedCrypto.authenticationCode(.sha256, key: key, message: KeyCheck.message)
        self.bytes = Array(mac.prefix(KeyCheck.byteCount))
    }

    /// Whether `key` has this check value, compared in constant time.
    package func matches(_ key: SecureBuffer) -> Bool {
        let other = KeyCheck(for: key).bytes
        return zip(bytes, other).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
    }

    /// The value as stored in the `.key` file: base64.
    package var base64: String { Base64.encode(bytes) }

    package var description: String { base64 }
}
