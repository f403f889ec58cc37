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

    /// Whether SQLCipher accepts `pageSize`: a power of two from 512 to 65536.
    public static func isValidPageSize(_ pageSize: Int) -> Bool {
        (512...65536).contains(pageSize) && pageSize.nonzeroBitCount == 1
    }
}
