/// The SQLCipher settings a database needs to open, recorded in its `.key` file (covered by the
/// file's MAC) and applied on every open.
///
/// | field | `.key` (`cipher` object) | absent means |
/// |---|---|---|
/// | ``compatibility`` | `compatibility`: `3` or `4` | `3`: files written before it was recorded |
/// | ``pageSize`` | `page_size` | `1024` |
/// | ``hmacAlgorithm`` | `hmac_algorithm` | the format's: HMAC-SHA1 (3), HMAC-SHA512 (4) |
/// | ``kdfAlgorithm`` | `kdf_algorithm` | the format's: PBKDF2-HMAC-SHA1 (3), -SHA512 (4) |
/// | ``plaintextHeaderSize`` | `plaintext_header_size` | `0`: the salt opens the file |
/// | ``salt`` | `salt` (base64) | unknown (older files) |
/// | ``sqlcipherVersion`` | `sqlcipher` | unknown: informational only |
public struct CipherSettings: Sendable, Hashable {
    /// SQLCipher's `cipher_page_size`.
    public var pageSize: Int
    /// The SQLCipher version that wrote the database, as `PRAGMA cipher_version` gave it.
    public var sqlcipherVersion: String?
    /// The database's 16-byte salt: the first 16 bytes of the file, which SQLCipher keeps in the
    /// clear and a rotation (by copy or `PRAGMA rekey`) does not change. It ties the `.key` file to its database, so that
    /// a key that fails to open can be told from a damaged database. With a plaintext header
    /// the file does not hold it, and it is supplied on every open (`PRAGMA cipher_salt`).
    public var salt: [UInt8]?
    /// The on-disk format, as SQLCipher's `cipher_compatibility` names it: `3` (SQLCipher 3.x:
    /// HMAC-SHA1) or `4` (SQLCipher 4: HMAC-SHA512); `nil` in files written before it was
    /// recorded, which are all `3`.
    public var compatibility: Int?
    /// The page HMAC, when it differs from the format's default.
    public var hmacAlgorithm: HMACAlgorithm?
    /// The KDF (which also derives the HMAC key from a raw key), when it differs from the
    /// format's default.
    public var kdfAlgorithm: KDFAlgorithm?
    /// How many bytes at the start of the file SQLCipher leaves in plaintext
    /// (`cipher_plaintext_header_size`): `0`, or `32` so that iOS recognises a WAL database
    /// held open in a shared app-group container. SQLCipher 4 format only.
    public var plaintextHeaderSize: Int

    /// Creates settings.
    public init(
        pageSize: Int,
        sqlcipherVersion: String? = nil,
        salt: [UInt8]? = nil,
        compatibility: Int? = nil,
        hmacAlgorithm: HMACAlgorithm? = nil,
        kdfAlgorithm: KDFAlgorithm? = nil,
        plaintextHeaderSize: Int = 0
    ) {
        self.pageSize = pageSize
        self.sqlcipherVersion = sqlcipherVersion
        self.salt = salt
        self.compatibility = compatibility
        self.hmacAlgorithm = hmacAlgorithm
        self.kdfAlgorithm = kdfAlgorithm
        self.plaintextHeaderSize = plaintextHeaderSize
    }

    /// The on-disk format: ``compatibility``, or `3` for files that do not record it.
    public var format: Int { compatibility ?? 3 }

    /// The page HMAC the database uses: ``hmacAlgorithm`` or the format's default.
    public var effectiveHMACAlgorithm: HMACAlgorithm { hmacAlgorithm ?? (format >= 4 ? .sha512 : .sha1) }

    /// The KDF the database uses: ``kdfAlgorithm`` or the format's default.
    public var effectiveKDFAlgorithm: KDFAlgorithm { kdfAlgorithm ?? (format >= 4 ? .sha512 : .sha1) }

    /// The bytes SQLCipher keeps at the end of every page: a 16-byte IV and the HMAC, rounded
    /// up to the 16-byte AES block.
    public var reservedBytesPerPage: Int {
        let raw = 16 + effectiveHMACAlgorithm.byteCount
        return (raw + 15) / 16 * 16
    }

    /// SQLCipher 3's page size, assumed for `.key` files that record none.
    public static let sqlcipherDefaultPageSize = 1024

    /// The page size SQLCipher 4's `PRAGMA cipher_compatibility = format` sets, whatever the
    /// process's defaults: 4096 for format 4, 1024 for the older ones.
    static func compatibilityPageSize(format: Int) -> Int {
        format >= 4 ? newDatabasePageSize : sqlcipherDefaultPageSize
    }
    /// The page size of new databases: SQLCipher 4's default, and about twice as fast to rekey.
    public static let newDatabasePageSize = 4096
    /// The size of the salt at the start of every SQLCipher file.
    public static let saltByteCount = 16
    /// The plaintext header `dbkey init --plaintext-header` gives: the 32 bytes iOS reads.
    public static let sharedContainerHeaderSize = 32
    /// The formats (``compatibility``) DBKey reads and writes.
    public static let formats = 3...4

    /// Whether SQLite accepts `pageSize`: a power of two from 512 to 65536.
    public static func isValidPageSize(_ pageSize: Int) -> Bool {
        (512...65536).contains(pageSize) && pageSize.nonzeroBitCount == 1
    }

    /// The page sizes a new encrypted database may have: a power of two from 1024 to 65536.
    ///
    /// SQLCipher keeps 48 bytes of every page (80 in the 4 format) for its IV and HMAC, and
    /// SQLite needs at least 480 usable bytes a page, so a 512-byte page cannot be written: a
    /// database created with it never opens again.
    public static let newDatabasePageSizes = [1024, 2048, 4096, 8192, 16384, 32768, 65536]

    /// These settings with the shared-container plaintext header and a new random salt, which
    /// the file will not hold (SQLCipher 4 format only).
    func withPlaintextHeader() -> CipherSettings {
        var settings = self
        settings.plaintextHeaderSize = CipherSettings.sharedContainerHeaderSize
        // Not secret (SQLCipher keeps it in the clear); SystemRandomNumberGenerator is the OS CSPRNG.
        settings.salt = (0..<CipherSettings.saltByteCount).map { _ in UInt8.random(in: .min ... .max) }
        return settings
    }

    /// The settings of a new database in `format` (3 or 4) with `pageSize`, recording the
    /// format explicitly.
    static func new(format: Int, pageSize: Int, plaintextHeaderSize: Int = 0) -> CipherSettings {
        CipherSettings(pageSize: pageSize, compatibility: format, plaintextHeaderSize: plaintextHeaderSize)
    }

    /// What is wrong with these settings, or `nil` when SQLCipher can use them.
    var problem: String? {
        guard CipherSettings.isValidPageSize(pageSize) else {
            return "page_size \(pageSize) is not a power of two from 512 to 65536"
        }
        if let compatibility, !CipherSettings.formats.contains(compatibility) {
            return "compatibility \(compatibility) is not 3 or 4"
        }
        if plaintextHeaderSize != 0 {
            guard format >= 4 else { return "a plaintext header needs the SQLCipher 4 format (compatibility 4)" }
            guard plaintextHeaderSize % 16 == 0, plaintextHeaderSize > 0,
                plaintextHeaderSize <= pageSize - reservedBytesPerPage - 480
            else {
                return
                    "plaintext_header_size \(plaintextHeaderSize) is not a positive multiple of 16 that leaves a usable page"
            }
            guard salt != nil else { return "a plaintext header needs the salt recorded (salt)" }
        }
        return nil
    }

    /// A page HMAC SQLCipher 4 can use (`cipher_hmac_algorithm`).
    public enum HMACAlgorithm: String, Sendable, Hashable, CaseIterable {
        /// HMAC-SHA1, the SQLCipher 3 format's.
        case sha1 = "HMAC_SHA1"
        /// HMAC-SHA256.
        case sha256 = "HMAC_SHA256"
        /// HMAC-SHA512, the SQLCipher 4 format's.
        case sha512 = "HMAC_SHA512"

        /// The MAC's length.
        public var byteCount: Int {
            switch self {
            case .sha1: 20
            case .sha256: 32
            case .sha512: 64
            }
        }
    }

    /// A KDF SQLCipher 4 can use (`cipher_kdf_algorithm`).
    public enum KDFAlgorithm: String, Sendable, Hashable, CaseIterable {
        /// PBKDF2 with HMAC-SHA1, the SQLCipher 3 format's.
        case sha1 = "PBKDF2_HMAC_SHA1"
        /// PBKDF2 with HMAC-SHA256.
        case sha256 = "PBKDF2_HMAC_SHA256"
        /// PBKDF2 with HMAC-SHA512, the SQLCipher 4 format's.
        case sha512 = "PBKDF2_HMAC_SHA512"
    }
}
