import SQLCipherKeyManager

/// The error an HTTP status of a key management service means when the service's own error
/// (its body) says nothing more specific: the one mapping every HTTP provider falls back to.
package enum KmsHTTPStatus {
    /// - Parameters:
    ///   - status: The HTTP status; `0` when no answer came.
    ///   - what: What failed, with the service's own words (`Cloud KMS decrypt with … failed
    ///     with HTTP 403 …`).
    ///   - tokenRefused: The advice for a refused token (401); the access advice when `nil`.
    ///   - accessDenied: The advice for a refused caller (403): the role or policy to grant.
    ///   - notFound: The advice for a missing key (404): what to check.
    /// - Returns: `kms-unavailable` for no answer, 429 and 5xx; `kms-access-denied` for 401
    ///   and 403; `kms-key-not-found` for 404; `invalid-configuration` for anything else.
    package static func error(
        status: Int, what: String, tokenRefused: String? = nil, accessDenied: String, notFound: String
    ) -> DBKeyError {
        switch status {
        case 0, 429, 500...:
            DBKeyError(.kmsUnavailable, "\(what). Try again later.")
        case 401:
            DBKeyError(.kmsAccessDenied, "\(what). \(tokenRefused ?? accessDenied)")
        case 403:
            DBKeyError(.kmsAccessDenied, "\(what). \(accessDenied)")
        case 404:
            DBKeyError(.kmsKeyNotFound, "\(what). \(notFound)")
        default:
            DBKeyError(.invalidConfiguration, "\(what).")
        }
    }
}
