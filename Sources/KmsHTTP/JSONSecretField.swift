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

    /// Serialises `object` and appends `"name":"value"` as its last field, copying `value`
    /// (already base64 text) byte for byte.
    ///
    /// The caller wipes the result (``Foundation/Data/wipe()``) once it has been sent.
    package static func body(_ object: [String: Any], appending name: String, value: SecureBuffer) throws -> Data {
        var body = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        body.removeLast()
        body.append(contentsOf: Array("\(object.isEmpty ? "" : ",")\"\(name)\":\"".utf8))
        value.withUnsafeBytes { body.append(contentsOf: $0) }
        body.append(contentsOf: Array("\"}".utf8))
        return body
    }
}
