/// The SQLCipher settings a database was created with, recorded in its `.key` file and applied
/// on every open.
public struct CipherSettings: Sendable, Hashable {
    /// SQLCipher's `cipher_page_size`.
    public var pageSize: Int
    /// The SQLCipher version that wrote the database, as `PRAGMA cipher_version` gave it.
    public var sqlcipherVersion: String?
    /// The database's 16-byte salt: the first 16 bytes of the file, which SQLCipher keeps in the
    /// clear and `PRAGMA rekey` does not change. It ties the `.key` file to its database, so that
    /// a key that fails to open can be told from a damaged database.
    public var salt: [UInt8]?

    /// Creates settings.
    public init(pageSize: Int, sqlcipherVersion: String? = nil, salt: [UInt8]? = nil) {
        self.pageSize = pageSize
        self.sqlcipherVersion = sqlcipherVersion
        self.salt = salt
    }

    /// SQLCipher 3's page size, assumed for `.key` files that record none.
    public static let sqlcipherDefaultPageSize = 1024
    /// The page size of new databases: SQLCipher 4's default, and about twice as fast to rekey.
    public static let newDatabasePageSize = 4096
    /// The size of the salt at the start of every SQLCipher file.
    public static let saltByteCount = 16

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
}
