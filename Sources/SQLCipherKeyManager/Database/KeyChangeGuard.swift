internal import CSQLCipher

/// Refuses, through SQLite's authorizer, the SQL that would change a managed database's key or
/// format behind DBKey's journal, so that user SQL can never leave a database that its `.key`
/// no longer opens.
///
/// Refused on every connection the manager hands out (``DatabaseKeyManager/open()``, and so
/// `dbkey sql`):
/// - the keying pragmas, with or without a value: `key`, `rekey`, `hexkey`, `hexrekey`,
///   `textkey`, `textrekey`, `activate`, and `cipher_migrate`, which rewrites the format;
/// - setting a cipher or page setting: `page_size`, `cipher`, `kdf_iter`, `fast_kdf_iter`,
///   `rekey_cipher`, `rekey_kdf_iter` and every `cipher_*` pragma given a value (reading them,
///   `cipher_version` and `cipher_integrity_check` stay allowed);
/// - `ATTACH` of anything but `:memory:` or a temporary database: an attached file inherits the
///   key, and the next rotation would strand it — and so `VACUUM INTO` a file (SQLCipher 4),
///   which attaches its target when it runs;
/// - `sqlcipher_export`, which writes an unmanaged copy — refused where a statement names it, and
///   replaced by a function that fails wherever else it could run (a column's `DEFAULT`);
/// - setting `temp_store` (in any spelling, to any value) and `temp_store_directory`: DBKey keeps
///   SQLite's temporary storage in memory, since its files (temporary tables, sorts that spill,
///   statement journals, `VACUUM`'s copy) are not encrypted.
///
/// Each refusal is ``DBKeyError/Code-swift.struct/sqlite`` with `SQLITE_AUTH` and a message that
/// names the managed operation to use instead.
final class KeyChangeGuard {
    /// Why the statement being prepared was refused (SQLite reports a refused function as a
    /// plain `SQLITE_ERROR`, so the reason is kept here, not inferred from the code).
    private(set) var refusal: String?

    /// Forgets the last refusal; called before each statement is prepared.
    func reset() {
        refusal = nil
    }

    private static let keyingPragmas: Set<String> = [
        "key", "rekey", "hexkey", "hexrekey", "textkey", "textrekey", "activate", "cipher_migrate",
    ]
    private static let settingPragmas: Set<String> = [
        "page_size", "cipher", "kdf_iter", "fast_kdf_iter", "rekey_cipher", "rekey_kdf_iter",
    ]

    /// Installs the guard on `handle` (`sqlite3_set_authorizer`). The caller keeps the guard
    /// alive as long as the handle.
    func install(on handle: OpaquePointer) {
        sqlite3_set_authorizer(
            handle,
            { context, action, first, second, _, _ in
                guard let context else { return SQLITE_OK }
                let guarding = Unmanaged<KeyChangeGuard>.fromOpaque(context).takeUnretainedValue()
                let refusal = KeyChangeGuard.refusal(
                    action: action, first.map { String(cString: $0) }, second.map { String(cString: $0) })
                guard let refusal else { return SQLITE_OK }
                guarding.refusal = refusal
                return SQLITE_DENY
            },
            Unmanaged.passUnretained(self).toOpaque()
        )
    }

    /// The message of the `sqlcipher_export` that ``replaceExport(on:)`` installs.
    static let exportRefusal =
        "sqlcipher_export writes a copy of the database outside DBKey's management. Use dbkey migrate to change formats."

    /// Replaces SQLCipher's `sqlcipher_export` on `handle` with a function that fails: the
    /// authorizer sees the functions a statement names, but not those a column's `DEFAULT`
    /// expression calls when a row is inserted, and this catches every way in
    /// (`sqlite3_create_function_v2`, for each number of arguments SQLCipher's takes).
    static func replaceExport(on handle: OpaquePointer) throws {
        for arguments: Int32 in [-1, 1, 2] {
            let code = sqlite3_create_function_v2(
                handle, "sqlcipher_export", arguments, SQLITE_UTF8, nil,
                { context, _, _ in sqlite3_result_error(context, KeyChangeGuard.exportRefusal, -1) }, nil, nil, nil)
            guard code == SQLITE_OK else {
                throw DBKeyError(
                    .sqlite, "Could not guard sqlcipher_export on a managed connection (SQLite code \(code)).")
            }
        }
    }

    /// Why SQLite's authorizer should refuse an action, or `nil` to allow it.
    static func refusal(action: Int32, _ first: String?, _ second: String?) -> String? {
        switch action {
        case SQLITE_PRAGMA:
            let name = (first ?? "").lowercased()
            if keyingPragmas.contains(name) {
                return
                    "PRAGMA \(name) would change the database's key behind its .key file, leaving a database nothing opens. Change keys with dbkey rotate (DatabaseKeyManager.rotateKey) or dbkey migrate."
            }
            if name == "temp_store_directory" || (name == "temp_store" && second != nil) {
                return
                    "PRAGMA \(name) = … would let SQLite write temporary tables, sorts and journals to unencrypted files. DBKey keeps them in memory (temp_store = MEMORY) on every connection; reading PRAGMA temp_store is allowed."
            }
            if second != nil, settingPragmas.contains(name) || name.hasPrefix("cipher") {
                return
                    "PRAGMA \(name) = … would change how the database is encrypted or paged behind its .key file. Cipher settings change only through a managed operation (dbkey migrate for another format); reading the value is allowed."
            }
            return nil
        case SQLITE_ATTACH:
            guard let file = first, file == ":memory:" || file.isEmpty else {
                return
                    "ATTACH of a file (and VACUUM INTO one, which attaches it) would give it this database's key outside DBKey's management, and the next rotation would strand it. Bring another database under management with dbkey migrate, and copy data between managed connections."
            }
            return nil
        case SQLITE_FUNCTION:
            guard second?.lowercased() != "sqlcipher_export" else { return exportRefusal }
            return nil
        default:
            return nil
        }
    }
}
