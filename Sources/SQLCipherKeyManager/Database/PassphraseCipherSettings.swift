/// The settings a passphrase-keyed database made by another app needs to open, for migration.
///
/// | database | settings |
/// |---|---|
/// | SQLCipher 4.x defaults (iOS, Android, GRDB, `sqlcipher3`) | none, or `format: 4` |
/// | SQLCipher 3.x defaults | none, or `format: 3` |
/// | SQLCipher 2.x | `format: 3, kdfIterations: 4000` |
/// | SQLCipher 1.x | `format: 3, kdfIterations: 4000, useHMAC: false` |
///
/// Without a ``format`` DBKey tries SQLCipher 4's defaults first (when the linked SQLCipher is
/// 4.x) and then SQLCipher 3's.
public struct PassphraseCipherSettings: Sendable, Hashable {
    /// The format the database was written in (`PRAGMA cipher_compatibility`): 3 or 4; `nil`
    /// to try each the linked SQLCipher reads, newest first.
    public var format: Int?
    /// `PRAGMA kdf_iter`; `nil` keeps the format's: 256000 (4), 64000 (3).
    public var kdfIterations: Int?
    /// `PRAGMA cipher_page_size`; `nil` keeps the format's: 4096 (4), 1024 (3).
    public var pageSize: Int?
    /// `PRAGMA cipher_use_hmac`; `false` for SQLCipher 1.x databases.
    public var useHMAC: Bool

    /// Creates settings; the defaults let DBKey find the format and keep its defaults.
    public init(format: Int? = nil, kdfIterations: Int? = nil, pageSize: Int? = nil, useHMAC: Bool = true) {
        self.format = format
        self.kdfIterations = kdfIterations
        self.pageSize = pageSize
        self.useHMAC = useHMAC
    }

    /// The formats to try, newest first: the one given, or every one `engine` reads.
    func formatsToTry(on engine: SQLCipherEngine) -> [Int] {
        if let format { return [format] }
        return CipherSettings.formats.reversed().filter { engine.supports(format: $0) }
    }
}

extension DatabaseConnection {
    /// Applies a passphrase database's settings in `format`, each read back.
    func apply(_ settings: PassphraseCipherSettings, format: Int) throws {
        let engine = try requireEngine(reading: format)
        if engine.majorVersion >= 4 {
            try execute("PRAGMA cipher_compatibility = \(format)")
        }
        if !settings.useHMAC {
            try setCipherPragma("cipher_use_hmac", to: "0")
        }
        if let iterations = settings.kdfIterations {
            try setCipherPragma("kdf_iter", to: String(iterations))
        }
        if let pageSize = settings.pageSize {
            guard CipherSettings.isValidPageSize(pageSize) else {
                throw DBKeyError(
                    .invalidConfiguration, "The page size \(pageSize) is not a power of two from 512 to 65536.")
            }
            try setCipherPragma("cipher_page_size", to: String(pageSize))
        }
    }
}
