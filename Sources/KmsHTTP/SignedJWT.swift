import Foundation
import SQLCipherKeyManager

/// A signed JWT (RFC 7519) in compact form: the client assertions a service account or a
/// certificate makes for a token endpoint. An assertion is a credential while it is valid, so it
/// is put together in secure memory.
package enum SignedJWT {
    /// `header` and `claims`, base64url-encoded, joined, and signed by `sign` (which is given the
    /// signing input and returns the signature's bytes).
    package static func make(
        header: [String: Any], claims: [String: Any], sign: ([UInt8]) throws -> [UInt8]
    ) throws -> SecureBuffer {
        func encoded(_ object: [String: Any]) throws -> String {
            Base64URL.encode(Array(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])))
        }
        let signingInput = try encoded(header) + "." + encoded(claims)
        var signature = try sign(Array(signingInput.utf8))
        defer { for index in signature.indices { signature[index] = 0 } }
        let encodedSignature = Base64URL.encode(signature.withUnsafeBytes { SecureBuffer(copying: $0) })
        let prefix = Array((signingInput + ".").utf8)
        return SecureBuffer(count: prefix.count + encodedSignature.count) { output in
            output.copyBytes(from: prefix)
            encodedSignature.withUnsafeBytes {
                UnsafeMutableRawBufferPointer(rebasing: output[prefix.count...]).copyMemory(from: $0)
            }
        }
    }
}
