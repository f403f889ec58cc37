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
        let marker = Array("\"\(name)\"".utf8)
        var result: SecureBuffer?
        body.withUnsafeMutableBytes { bytes in
            guard let markerStart = bytes.firstRange(of: marker)?.lowerBound else { return }
            var index = markerStart + marker.count
            while index < bytes.count, bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: ":") {
                index += 1
            }
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return }
            let valueStart = index + 1
            guard let valueEnd = bytes[valueStart...].firstIndex(of: UInt8(ascii: "\"")) else { return }
            result = SecureBuffer.decodingBase64(UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd]))
            for position in valueStart..<valueEnd { bytes[position] = UInt8(ascii: "A") }
        }
        return result
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
