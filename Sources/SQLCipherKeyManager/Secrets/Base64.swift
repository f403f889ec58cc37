/// Standard base64 (RFC 4648, with padding) that can work inside a ``SecureBuffer``.
///
/// Foundation's base64 goes through `Data` and `String`, which would leave copies of a master
/// key in ordinary memory; these functions read and write caller-provided buffers instead.
package enum Base64 {
    /// The number of bytes `encodedCount` base64 characters decode to at most.
    package static func maximumDecodedCount(_ encodedCount: Int) -> Int { encodedCount / 4 * 3 }

    /// The number of characters `byteCount` bytes encode to.
    package static func encodedCount(_ byteCount: Int) -> Int { (byteCount + 2) / 3 * 4 }

    /// Decodes `text` into `output`; returns the number of bytes written, or `nil` when `text` is
    /// not canonical padded base64 or `output` is too small.
    package static func decode(_ text: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        guard text.count % 4 == 0 else { return nil }
        var written = 0
        var index = 0
        while index < text.count {
            let isLastQuad = index + 4 == text.count
            let padding = isLastQuad ? (text[index + 3] == pad ? (text[index + 2] == pad ? 2 : 1) : 0) : 0
            var quad: UInt32 = 0
            for offset in 0..<(4 - padding) {
                guard let value = sextet(text[index + offset]) else { return nil }
                quad = quad << 6 | UInt32(value)
            }
            quad <<= UInt32(6 * padding)
            let byteCount = 3 - padding
            guard written + byteCount <= output.count else { return nil }
            for offset in 0..<byteCount {
                output[written + offset] = UInt8(truncatingIfNeeded: quad >> UInt32(16 - 8 * offset))
            }
            // Canonical form: the bits under the padding must be zero.
            if padding > 0, UInt8(truncatingIfNeeded: quad >> UInt32(16 - 8 * byteCount)) != 0 {
                return nil
            }
            written += byteCount
            index += 4
        }
        return written
    }

    /// Encodes `bytes` into `output`, which must hold ``encodedCount(_:)`` characters.
    package static func encode(_ bytes: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) {
        precondition(output.count >= encodedCount(bytes.count), "base64 output buffer too small")
        var written = 0
        var index = 0
        while index < bytes.count {
            let available = min(3, bytes.count - index)
            var triple: UInt32 = 0
            for offset in 0..<3 {
                triple = triple << 8 | UInt32(offset < available ? bytes[index + offset] : 0)
            }
            for offset in 0..<4 {
                output[written + offset] =
                    offset <= available
                    ? character(UInt8(truncatingIfNeeded: triple >> UInt32(18 - 6 * offset)) & 0x3F) : pad
            }
            written += 4
            index += 3
        }
    }

    /// Decodes non-secret base64 text (wrapped keys, key checks, salts).
    package static func decode(_ text: String) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        return utf8.withUnsafeBytes { input -> [UInt8]? in
            var output = [UInt8](repeating: 0, count: maximumDecodedCount(input.count))
            guard let count = output.withUnsafeMutableBytes({ decode(input, into: $0) }) else {
                return nil
            }
            output.removeLast(output.count - count)
            return output
        }
    }

    /// Encodes non-secret bytes (wrapped keys, key checks, salts).
    package static func encode(_ bytes: [UInt8]) -> String {
        var output = [UInt8](repeating: 0, count: encodedCount(bytes.count))
        bytes.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { encode(input, into: $0) }
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static let pad = UInt8(ascii: "=")

    /// The 6-bit value of a base64 character, without a table lookup indexed by the secret.
    private static func sextet(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return character - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return character - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return character - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }

    private static func character(_ sextet: UInt8) -> UInt8 {
        switch sextet {
        case 0..<26: return UInt8(ascii: "A") + sextet
        case 26..<52: return UInt8(ascii: "a") + sextet - 26
        case 52..<62: return UInt8(ascii: "0") + sextet - 52
        case 62: return UInt8(ascii: "+")
        default: return UInt8(ascii: "/")
        }
    }
}

extension SecureBuffer {
    /// Decodes base64 text held in secure memory into a new buffer, or `nil` when the text is not
    /// canonical base64.
    package static func decodingBase64(_ text: UnsafeRawBufferPointer) -> SecureBuffer? {
        var decodedCount: Int?
        let scratch = SecureBuffer(count: Base64.maximumDecodedCount(text.count)) { output in
            decodedCount = Base64.decode(text, into: output)
        }
        guard let decodedCount else { return nil }
        // Padding leaves up to two unused bytes at the end: keep exactly the decoded ones.
        return scratch.withUnsafeBytes {
            SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(decodedCount)))
        }
    }

    /// The bytes base64-encoded, in a new buffer.
    package func base64Encoded() -> SecureBuffer {
        withUnsafeBytes { bytes in
            SecureBuffer(count: Base64.encodedCount(bytes.count)) { Base64.encode(bytes, into: $0) }
        }
    }
}
