/// What ``LocalDbKeyManager/verify()`` checked.
public struct VerificationReport: Sendable {
    /// The `.key` file's contents.
    public let keyFile: KeyFile
    /// Whether the file had a key check to compare the unwrapped key with (older files do not).
    public let keyCheckVerified: Bool
    /// The page count `PRAGMA page_count` reported.
    public let pageCount: Int64
}

extension LocalDbKeyManager {
    /// Checks everything between the `.key` file and the last page: the file is valid, the KMS
    /// unwraps the key, the key matches the key check, the database opens with it, and
    /// `PRAGMA integrity_check` finds nothing wrong.
    ///
    /// - Throws: ``DBKeyError`` for the first check that fails;
    ///   ``DBKeyError/Code-swift.struct/databaseDamaged`` when the integrity check reports
    ///   problems (the first few are in the message).
    public func verify() async throws -> VerificationReport {
        let (connection, keyFile) = try await openReportingKeyFile()
        defer { connection.close() }
        let problems = try connection.integrityCheck()
        guard problems.isEmpty else {
            throw DBKeyError(
                .databaseDamaged,
                "\(databasePath) failed its integrity check (\(problems.count) problems; first: \(problems.prefix(3).joined(separator: "; "))). Restore it from a backup."
            )
        }
        let pageCount = try connection.fetchAll("PRAGMA page_count").first?[0].integerValue ?? 0
        return VerificationReport(keyFile: keyFile, keyCheckVerified: keyFile.keyCheck != nil, pageCount: pageCount)
    }
}
