import Foundation
import SQLCipherKeyManager

/// A token file of another system's making (a Kubernetes projected service-account token, EKS
/// Pod Identity's token): often a symbolic link and readable by the pod, so it does not get the
/// key-file checks; it is read into secure memory and the copy wiped.
package enum TokenFile {
    package static let maximumSize = 64 * 1024

    package static func read(_ path: String, what: String) throws -> SecureBuffer {
        guard var data = FileManager.default.contents(atPath: path) else {
            throw DBKeyError(.kmsAccessDenied, "The \(what) \(path) cannot be read.")
        }
        defer { data.wipe() }
        guard data.count <= maximumSize else {
            throw DBKeyError(.kmsAccessDenied, "The \(what) \(path) is larger than \(maximumSize) bytes.")
        }
        while let last = data.last, last == 0x0A || last == 0x0D || last == 0x20 { data.removeLast() }
        guard !data.isEmpty else { throw DBKeyError(.kmsAccessDenied, "The \(what) \(path) is empty.") }
        return SecureBuffer.takingAndWiping(&data)
    }
}
