/// Every file DBKey keeps or leaves beside a database: the one place their names are made.
///
/// | path | what it is | who removes it |
/// |---|---|---|
/// | `<db>.key` | the wrapped data key and the journal (``KeyFile``) | never |
/// | `<db>.key.lock` | the lock every connection and key change takes (``DatabaseLock``) | never |
/// | `<db>.key.tmp.N` | a `.key` write a killed process left (``ProtectedFile``) | the next key change |
/// | `<db>-wal`, `<db>-shm`, `<db>-journal` | SQLite's own | SQLite; a swap, before its rename |
/// | `<db>.dbkey-rotating` | a rotation's copy | the rotation; the next open when no record names it |
/// | `<db>.dbkey-migrating` | a migration's, upgrade's or creation's copy | the same |
/// | `<db>.dbkey-backup`, `<db>.dbkey-restoring` | a backup or restore placed at `<db>` | its placement; the next backup or restore |
/// | `<db>.key.rotate-request`, `-claimed`, `-result` | a rotation asked of a running app (``RotationRequest``) | the app and the requester |
package struct DatabaseFiles: Sendable, Hashable {
    /// The database file.
    package let database: String

    package init(_ databasePath: String) {
        database = databasePath
    }

    /// What a database's path has appended to name its `.key` file.
    static let keyFileSuffix = ".key"

    /// The database a `.key` file's path names, or `nil` when the name is not `<db>.key`.
    static func database(ofKeyFile path: String) -> String? {
        guard path.hasSuffix(keyFileSuffix), !(path.split(separator: "/").last ?? "").elementsEqual(keyFileSuffix)
        else { return nil }
        return String(path.dropLast(keyFileSuffix.count))
    }

    /// The `.key` file.
    package var keyFile: String { database + DatabaseFiles.keyFileSuffix }
    /// The lock file.
    var lock: String { keyFile + ".lock" }
    /// SQLite's write-ahead log.
    var wal: String { database + "-wal" }
    /// SQLite's WAL index.
    var walIndex: String { database + "-shm" }
    /// SQLite's rollback journal.
    var rollbackJournal: String { database + "-journal" }
    /// SQLite's files beside the database, which a swap removes before its rename.
    var sqliteFiles: [String] { [wal, walIndex, rollbackJournal] }
    /// A rotation's copy.
    var rotationCopy: String { database + ".dbkey-rotating" }
    /// The copy a migration, an upgrade or a creation builds before renaming it in.
    var migrationCopy: String { database + ".dbkey-migrating" }
    /// The flushed copy a backup places at this path.
    var backupCopy: String { database + ".dbkey-backup" }
    /// The flushed copy a restore places at this path.
    var restoringCopy: String { database + ".dbkey-restoring" }
    /// A rotation asked of the app that holds the database open.
    var rotationRequest: String { keyFile + ".rotate-request" }
    /// A request the app has claimed.
    var claimedRotationRequest: String { keyFile + ".rotate-claimed" }
    /// The app's answer to a request.
    var rotationResult: String { keyFile + ".rotate-result" }

    /// The key changes' copies, each with what left it when no change is running.
    var keyChangeCopies: [(path: String, left: String)] {
        [
            (migrationCopy, "the copy of a migration or upgrade that did not finish"),
            (rotationCopy, "the copy of a rotation that did not finish"),
        ]
    }

    /// Every file of this table whose owner and mode matter: all but the temporaries of
    /// `.key` writes, which ``ProtectedFile`` names.
    package var all: [String] {
        [database, keyFile, lock] + sqliteFiles + keyChangeCopies.map(\.path)
            + [backupCopy, restoringCopy, rotationRequest, claimedRotationRequest, rotationResult]
    }
}
