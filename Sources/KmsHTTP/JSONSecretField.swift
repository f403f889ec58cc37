import Foundation
import SQLCipherKeyManager

/// A secret (a data key, in base64) inside a JSON request or response body, handled so that it
/// never becomes a `String` and no JSON parser ever sees it.
package enum JSONSecretField {
    /// Decodes the base64 string value of the first `"name"` field straight into secure memory,
    /// then overwrites it in `body` with `A`s, so that the body can be parsed for its other
    /// fields.
    ///
    /// - Returns: `nil` when the field is missing or its value is not base64.
    package static func take(_ name: String, from body: inout Data) -> SecureBuffer? {
        var result: SecureBuffer?
        body.withUnsafeMutableBytes { bytes in
            guard let valueStart = stringValueStart(of: name, in: UnsafeRawBufferPointer(bytes)) else { return }
            guard let valueEnd = bytes[valueStart...].firstIndex(of: UInt8(ascii: "\"")) else { return }
            result = SecureBuffer.decodingBase64(UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd]))
            for position in valueStart..<valueEnd { bytes[position] = UInt8(ascii: "A") }
        }
        return result
    }

    /// Takes the string value of the first `"name"` field (an OAuth token, a PEM private key)
    /// into secure memory, its JSON escapes undone, then overwrites it in `body` with `A`s.
    ///
    /// - Returns: `nil` when the field is missing, is not a string, or holds a `\u` escape
    ///   (which no token or PEM text needs).
    package static func takeText(_ name: String, from body: inout Data) -> SecureBuffer? {
        var result: SecureBuffer?
        body.withUnsafeMutableBytes { bytes in
            guard let valueStart = stringValueStart(of: name, in: UnsafeRawBufferPointer(bytes)) else { return }
            // The closing quote is the first one not escaped; the value is never longer than its text.
            var end = valueStart
            var escaped = false
            while end < bytes.count, escaped || bytes[end] != UInt8(ascii: "\"") {
                escaped = !escaped && bytes[end] == UInt8(ascii: "\\")
                end += 1
            }
            guard end < bytes.count else { return }
            var length = 0
            var valid = true
            let scratch = SecureBuffer(count: end - valueStart) { output in
                var position = valueStart
                while position < end {
                    var byte = bytes[position]
                    if byte == UInt8(ascii: "\\") {
                        position += 1
                        switch bytes[position] {
                        case UInt8(ascii: "n"): byte = 0x0A
                        case UInt8(ascii: "r"): byte = 0x0D
                        case UInt8(ascii: "t"): byte = 0x09
                        case UInt8(ascii: "/"), UInt8(ascii: "\\"), UInt8(ascii: "\""): byte = bytes[position]
                        default: valid = false
                        }
                    }
                    output[length] = byte
                    length += 1
                    position += 1
                }
            }
            for position in valueStart..<end { bytes[position] = UInt8(ascii: "A") }
            guard valid else { return }
            result = scratch.withUnsafeBytes {
                SecureBuffer(copying: UnsafeRawBufferPointer(rebasing: $0.prefix(length)))
            }
        }
        return result
    }

    /// The index just after the opening quote of the first `"name"` field's string value.
    private static func stringValueStart(of name: String, in bytes: UnsafeRawBufferPointer) -> Int? {
        let marker = Array("\"\(name)\"".utf8)
        guard let markerStart = bytes.firstRange(of: marker)?.lowerBound else { return nil }
        var index = markerStart + marker.count
        while index < bytes.count, bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: ":") {
            index += 1
        }
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return nil }
        return index + 1
    }

    /// Serialises `object` with `secrets` as its last string fields, in secure memory: each
    /// secret is copied byte for byte, with JSON's escapes for a quote, a backslash and control
    /// characters, and never becomes a `String`.
    package static func object(_ object: [String: Any], secrets: [(name: String, value: SecureBuffer)]) throws
        -> SecureBuffer
    {
        var plain = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        plain.removeLast()
        func escapedCount(_ bytes: UnsafeRawBufferPointer) -> Int {
            bytes.reduce(0) { $0 + ($1 == 0x22 || $1 == 0x5C ? 2 : $1 < 0x20 ? 6 : 1) }
        }
        let names = secrets.map { Array("\"\($0.name)\":\"".utf8) }
        let total =
            plain.count + 1
            + zip(names, secrets).enumerated().reduce(0) { sum, item in
                sum + (item.offset > 0 || !object.isEmpty ? 1 : 0) + item.element.0.count
                    + item.element.1.value.withUnsafeBytes(escapedCount) + 1
            }
        return SecureBuffer(count: total) { output in
            var index = 0
            func put(_ byte: UInt8) {
                output[index] = byte
                index += 1
            }
            plain.forEach(put)
            let hex = Array("0123456789abcdef".utf8)
            for (offset, (name, secret)) in zip(names, secrets).enumerated() {
                if offset > 0 || !object.isEmpty { put(UInt8(ascii: ",")) }
                name.forEach(put)
                secret.value.withUnsafeBytes { bytes in
                    for byte in bytes {
                        switch byte {
                        case 0x22, 0x5C:
                            put(0x5C)
                            put(byte)
                        case ..<0x20:
                            for escape in Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]] {
                                put(escape)
                            }
                        default:
                            put(byte)
                        }
                    }
                }
                put(UInt8(ascii: "\""))
            }
            put(UInt8(ascii: "}"))
        }
    }
}
