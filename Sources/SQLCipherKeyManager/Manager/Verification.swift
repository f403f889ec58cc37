/// What ``DatabaseKeyManager/verify()`` checked.
public struct VerificationReport: Sendable {
    /// The `.key` file's contents.
    public let keyFile: KeyFile
    /// Whether the file had a key check to compare the unwrapped key with (older files do not).
    public let keyCheckVerified: Bool
    /// The page count `PRAGMA page_count` reported.
    public let pageCount: Int64
}

/// The full check (see ``DatabaseKeyManager/verify()``).
struct Verification {
    let database: ManagedDatabase

    func run() async throws -> VerificationReport {
        let (connection, keyFile) = try await database.openReportingKeyFile()
        let path = database.databasePath
        // integrity_check reads every page: on the long-work lane, never the cooperative pool.
        let box = ConnectionHandoff(connection)
        return try await BlockingExecutor.shared.run(.long) {
            let connection = box.connection
            defer { connection.close() }
            let problems = try connection.integrityCheck()
            guard problems.isEmpty else {
                throw DBKeyError(
                    .databaseDamaged,
                    "\(path) failed its integrity check (\(problems.count) problem\(problems.count == 1 ? "" : "s"); first: \(problems.prefix(3).joined(separator: "; "))). Restore it from a backup.",
                    path: path
                )
            }
            let pageCount = try connection.fetchAll("PRAGMA page_count").first?[0].integerValue ?? 0
            return VerificationReport(keyFile: keyFile, keyCheckVerified: keyFile.keyCheck != nil, pageCount: pageCount)
        }
    }
}

/// Hands a connection to the one thread that uses it next.
///
/// `@unchecked`: the connection is created on the caller, then used only by the executor
/// thread the box is given to, never by two threads at once.
struct ConnectionHandoff: @unchecked Sendable {
    let connection: DatabaseConnection

    init(_ connection: DatabaseConnection) {
        self.connection = connection
    }
}
