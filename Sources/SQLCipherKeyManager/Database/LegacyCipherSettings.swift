internal import CSQLCipher

/// The SQLCipher settings an older, passphrase-keyed database needs to open, for migration.
///
/// | database | settings |
/// |---|---|
/// | SQLCipher 3.x defaults | none |
/// | SQLCipher 2.x | `kdfIterations: 4000` |
/// | SQLCipher 1.x | `kdfIterations: 4000, useHMAC: false` |
public struct LegacyCipherSettings: Sendable, Hashable {
    /// `PRAGMA kdf_iter`; `nil` keeps SQLCipher 3's 64000.
    public var kdfIterations: Int?
    /// `PRAGMA cipher_page_size`; `nil` keeps 1024.
    public var pageSize: Int?
    /// `PRAGMA cipher_use_hmac`; `false` for SQLCipher 1.x databases.
    public var useHMAC: Bool

    /// Creates settings; the defaults are SQLCipher 3's.
    public init(kdfIterations: Int? = nil, pageSize: Int? = nil, useHMAC: Bool = true) {
        self.kdfIterations = kdfIterations
        self.pageSize = pageSize
        self.useHMAC = useHMAC
    }
}

extension DatabaseConnection {
    /// Applies and reads back each legacy setting: SQLCipher ignores pragmas it does not know.
    func apply(_ settings: LegacyCipherSettings) throws {
        if !settings.useHMAC {
            try setCipherPragma("cipher_use_hmac", to: "OFF", expecting: 0)
        }
        if let iterations = settings.kdfIterations {
            try setCipherPragma("kdf_iter", to: String(iterations), expecting: Int64(iterations))
        }
        if let pageSize = settings.pageSize {
            guard CipherSettings.isValidPageSize(pageSize) else {
                throw DBKeyError(
                    .invalidConfiguration, "The page size \(pageSize) is not a power of two from 512 to 65536.")
            }
            try setCipherPragma("cipher_page_size", to: String(pageSize), expecting: Int64(pageSize))
        }
    }

    func setCipherPragma(_ name: String, to value: String, expecting expected: Int64) throws {
        try execute("PRAGMA \(name) = \(value)")
        let applied = try fetchAll("PRAGMA \(name)").first?[0]
        guard applied == .integer(expected) || applied == .text(String(expected)) else {
            throw DBKeyError(
                .unsupportedFormat,
                "The linked SQLCipher did not accept PRAGMA \(name) = \(value); it answered \(applied.map { "\($0)" } ?? "nothing")."
            )
        }
    }
}
