internal import CSQLCipher
import Foundation
import Synchronization
import SystemPackage

/// Reads the raw (encrypted) bytes of a connection's database file through SQLite's own file
/// handle (`SQLITE_FCNTL_FILE_POINTER`), instead of a descriptor of DBKey's own.
///
/// POSIX record locks belong to the process and the file: closing any descriptor of the
/// database would drop the SQLite locks of every connection this process has open on it. A
/// rotation by copy reads the file while the app's readers go on, so it never opens one.
/// Reads take turns (SQLite never shares a file handle between threads), and the handle lives
/// as long as `connection` stays open.
final class DatabaseFileReader: @unchecked Sendable {
    private let connection: DatabaseConnection
    private let file: UnsafeMutablePointer<sqlite3_file>
    private let turns = Mutex(())

    /// - Throws: ``DBKeyError/Code-swift.struct/sqlite`` when SQLite has no file for the
    ///   connection's main database.
    init(_ connection: DatabaseConnection) throws {
        self.connection = connection
        var pointer: UnsafeMutableRawPointer?
        let code = sqlite3_file_control(try connection.liveHandle(), "main", SQLITE_FCNTL_FILE_POINTER, &pointer)
        guard code == SQLITE_OK, let pointer, pointer.assumingMemoryBound(to: sqlite3_file.self).pointee.pMethods != nil
        else {
            throw DBKeyError(.sqlite, "SQLite has no open file for \(connection.path).", path: connection.path)
        }
        file = pointer.assumingMemoryBound(to: sqlite3_file.self)
    }

    /// The file's size in bytes.
    func size() throws -> Int64 {
        try turns.withLock { _ in
            var size: sqlite3_int64 = 0
            let code = file.pointee.pMethods.pointee.xFileSize(file, &size)
            guard code == SQLITE_OK else { throw failure("find the size of") }
            return size
        }
    }

    /// Cuts the file to `size` bytes (`xTruncate`).
    func truncate(to size: Int64) throws {
        try turns.withLock { _ in
            guard file.pointee.pMethods.pointee.xTruncate(file, size) == SQLITE_OK else { throw failure("truncate") }
        }
    }

    /// Fills `buffer` with the file's bytes from `offset`.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/databaseDamaged`` when the file ends first;
    ///   ``DBKeyError/Code-swift.struct/io`` when the read fails.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try turns.withLock { _ in
            let code = file.pointee.pMethods.pointee.xRead(file, base, Int32(buffer.count), offset)
            // SQLITE_IOERR_SHORT_READ, a macro Swift does not import.
            if code == SQLITE_IOERR | (2 << 8) {
                throw DBKeyError(
                    .databaseDamaged, "\(connection.path) ended while it was being read.", path: connection.path)
            }
            guard code == SQLITE_OK else { throw failure("read") }
        }
    }

    /// The error for a failed call, with the system error SQLite's call left (read at once,
    /// under the turn).
    private func failure(_ action: String) -> DBKeyError {
        let errorNumber = Platform.errno
        return DBKeyError.io(errorNumber == 0 ? Errno.ioError : Errno(rawValue: errorNumber), action, connection.path)
    }
}
