import Foundation

extension SecureBuffer {
    /// Moves secret bytes that a library returned in `Data` into a new buffer and wipes the
    /// `Data`'s storage.
    ///
    /// Some APIs (AES-GCM's `open`, JSON decoders) can only hand plaintext back as `Data`; this
    /// keeps the time it spends in ordinary memory as short as possible.
    package static func takingAndWiping(_ data: inout Data) -> SecureBuffer {
        let buffer = data.withUnsafeBytes { SecureBuffer(copying: $0) }
        data.wipe()
        data = Data()
        return buffer
    }
}

extension Data {
    /// Overwrites this value's bytes with zeros, with `explicit_bzero` so that the compiler
    /// cannot drop the writes.
    package mutating func wipe() {
        withUnsafeMutableBytes { bytes in
            if let base = bytes.baseAddress {
                Platform.secureZero(base, bytes.count)
            }
        }
    }
}
