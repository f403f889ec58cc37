internal import CSQLCipher

/// The SQLCipher library linked into this process, as `PRAGMA cipher_version` names it at run
/// time — DBKey never assumes one.
///
/// SQLCipher 4.x writes new databases in the SQLCipher 4 format and opens 3.x-format databases
/// through `cipher_compatibility = 3`; SQLCipher 3.x reads and writes only the 3 format.
///
/// ```swift
/// let engine = try SQLCipherEngine.linked()
/// print(engine.version, engine.newDatabaseFormat)  // "4.6.1 community" 4
/// ```
public struct SQLCipherEngine: Sendable, Hashable {
    /// `PRAGMA cipher_version`: `3.4.1`, `4.6.1 community`, …
    public let version: String
    /// The version's first number.
    public let majorVersion: Int
    /// The SQLite version it is built on (`sqlite3_libversion`).
    public let sqliteVersion: String

    /// The format new databases get: 4 on SQLCipher 4.x, 3 on 3.x.
    public var newDatabaseFormat: Int { majorVersion >= 4 ? 4 : 3 }

    /// Whether this engine reads and writes databases in `format` (3 or 4).
    public func supports(format: Int) -> Bool {
        format <= newDatabaseFormat && CipherSettings.formats.contains(format)
    }

    private static let detected: Result<SQLCipherEngine, DBKeyError> = {
        do throws(DBKeyError) {
            return .success(try detect())
        } catch {
            return .failure(error)
        }
    }()

    /// The linked engine, asked once per process.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` when the linked SQLite is
    ///   not SQLCipher.
    public static func linked() throws -> SQLCipherEngine {
        try detected.get()
    }

    private static func detect() throws(DBKeyError) -> SQLCipherEngine {
        do {
            let connection = try DatabaseConnection.open(path: ":memory:", keying: .plaintext, create: true)
            defer { connection.close() }
            let version = try connection.cipherVersion()
            guard let major = version.split(separator: ".").first.flatMap({ Int($0) }) else {
                throw DBKeyError(
                    .unsupportedFormat,
                    "The linked SQLCipher reports the version \"\(version)\", which DBKey cannot read.")
            }
            return SQLCipherEngine(
                version: version, majorVersion: major, sqliteVersion: String(cString: sqlite3_libversion()))
        } catch let error as DBKeyError {
            throw error
        } catch {
            throw DBKeyError(.sqlite, "Cannot ask the linked SQLCipher its version: \(error).")
        }
    }

    /// Whether the linked library was built with `SQLITE_TEMP_STORE=0`: temporary storage always
    /// in files, whatever `PRAGMA temp_store` says (`sqlite3_compileoption_used`).
    static let tempStoreAlwaysOnDisk = sqlite3_compileoption_used("TEMP_STORE=0") == 1

    // MARK: - Process-wide settings

    /// Where SQLCipher 4's own log goes, at which level (`PRAGMA cipher_log_level`).
    public enum LogLevel: String, Sendable, CaseIterable {
        /// Nothing.
        case none = "NONE"
        /// Errors: a failed page HMAC check (a wrong key or damage) among them.
        case error = "ERROR"
        /// Errors and warnings: SQLCipher 4.6's default, to standard error on Linux.
        case warn = "WARN"
        /// Errors, warnings and information.
        case info = "INFO"
        /// Everything but traces.
        case debug = "DEBUG"
    }

    /// Sets SQLCipher 4's log level for the whole process — every connection of every library
    /// in it. SQLCipher 4.6 logs to standard error at `WARN` by default, so a wrong key or a
    /// damaged page prints "ERROR CORE … hmac check failed" lines there; DBKey reports those
    /// as typed errors and never changes this setting on its own: the app decides (`dbkey`
    /// sets `.none`). Does nothing on SQLCipher 3.x, which has no log.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` when SQLCipher 4 did not
    ///   accept the level.
    public static func setLogLevel(_ level: LogLevel) throws {
        try setProcessWide("cipher_log_level", to: level.rawValue)
    }

    /// Turns SQLCipher 4's memory security on for the rest of the process — every buffer
    /// SQLite frees is wiped and its memory locked (`PRAGMA cipher_memory_security = ON`). It
    /// is off by default, as it slows every allocation, and SQLCipher cannot turn it off again.
    /// DBKey keeps its own key bytes in wiped, locked buffers either way and never turns this
    /// on by itself: the app decides. Does nothing on 3.x.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` when SQLCipher 4 did not
    ///   report it on.
    public static func enableMemorySecurity() throws {
        try setProcessWide("cipher_memory_security", to: "ON", answer: "1")
    }

    /// SQLCipher 4 sets its log defaults when it keys its first database, overwriting what was
    /// set before: a throwaway in-memory database is keyed first (with a fixed raw key: there
    /// is nothing to protect in it, and no KDF runs).
    private static func setProcessWide(_ pragma: String, to value: String, answer expected: String? = nil) throws {
        guard try linked().majorVersion >= 4 else { return }
        let connection = try DatabaseConnection.open(path: ":memory:", keying: .plaintext, create: true)
        defer { connection.close() }
        try connection.applyKey(try RawKeyText.make(for: SecureBuffer(count: RawKeyText.keyByteCount) { _ in }))
        try connection.execute("PRAGMA \(pragma) = \(value)")
        let answer = try connection.fetchAll("PRAGMA \(pragma)").first?[0]
        guard (answer?.textValue ?? answer?.integerValue.map(String.init)) == expected ?? value else {
            throw DBKeyError(
                .unsupportedFormat,
                "The linked SQLCipher did not accept PRAGMA \(pragma) = \(value); it answered \(answer.map { "\($0)" } ?? "nothing")."
            )
        }
    }
}
