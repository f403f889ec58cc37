import SQLCipherKeyManager

/// base64url without padding (RFC 4648 §5), as JWTs and Azure Key Vault use it, for secret
/// bytes (in secure memory) and public ones alike.
package enum Base64URL {
    /// `bytes` encoded, in a new secure buffer.
    package static func encode(_ bytes: SecureBuffer) -> SecureBuffer {
        let standard = bytes.base64Encoded()
        return standard.withUnsafeBytes { text in
            let length = text.firstIndex(of: UInt8(ascii: "=")) ?? text.count
            return SecureBuffer(count: length) { output in
                for index in 0..<length { output[index] = translated(text[index], from: "+/", to: "-_") }
            }
        }
    }

    /// Public bytes, encoded.
    package static func encode(_ bytes: [UInt8]) -> String {
        let text = bytes.withUnsafeBytes { encode(SecureBuffer(copying: $0)) }
        return text.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
    }

    /// base64url text (padded or not) decoded into a new secure buffer; `nil` if it is not
    /// base64url.
    package static func decode(_ text: UnsafeRawBufferPointer) -> SecureBuffer? {
        guard !text.contains(UInt8(ascii: "+")), !text.contains(UInt8(ascii: "/")) else { return nil }
        let unpadded = text.firstIndex(of: UInt8(ascii: "=")) ?? text.count
        let standard = SecureBuffer(count: (unpadded + 3) / 4 * 4) { output in
            for index in 0..<output.count {
                output[index] = index < unpadded ? translated(text[index], from: "-_", to: "+/") : UInt8(ascii: "=")
            }
        }
        return standard.withUnsafeBytes { SecureBuffer.decodingBase64($0) }
    }

    package static func decode(_ text: String) -> SecureBuffer? {
        Array(text.utf8).withUnsafeBytes { decode($0) }
    }

    private static func translated(_ byte: UInt8, from: StaticString, to: StaticString) -> UInt8 {
        let source = from.utf8Start
        let target = to.utf8Start
        return byte == source[0] ? target[0] : byte == source[1] ? target[1] : byte
    }
}
