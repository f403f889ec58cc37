import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a database's key metadata, rotation schedule, KMS health and whether it opens.",
        discussion: "Exits with the error's status when the KMS does not answer or the database does not open."
    )

    @OptionGroup var options: DatabaseOptions

    func run() async throws {
        try await options.run { manager in
            let status = try await manager.status()
            options.json
                ? printJSON(status, keyFilePath: manager.keyFilePath)
                : printText(status, keyFilePath: manager.keyFilePath)
            if status.upgradeAvailable {
                Output.printWarning(
                    "\(options.database) is in the SQLCipher \(status.keyFile.cipher.format) format; the linked SQLCipher \(status.engine.version) writes the 4 format. Run `dbkey upgrade \(options.database)` to move it (a new data key, crash-safe; afterwards only SQLCipher 4 opens it)."
                )
            }
            if status.wrappedUnderOlderKeyVersion, case .success(let health) = status.kmsHealth {
                Output.printWarning(
                    "the data key is wrapped under version \(status.wrappedKekVersion ?? "?") of \(health.kekId), but version \(health.latestKekVersion ?? "?") is the newest. Run `dbkey rewrap \(options.database)` before the old version is retired."
                )
            }
            // A monitoring script should see a failure without parsing the report.
            if case .failure(let error) = status.kmsHealth {
                throw ExitCode(ExitStatus.status(for: error.code))
            }
            if let error = status.openError {
                throw ExitCode(ExitStatus.status(for: error.code))
            }
        }
    }

    private func printText(_ status: DatabaseKeyStatus, keyFilePath: String) {
        let keyFile = status.keyFile
        let rotation: String
        if let days = keyFile.rotationPeriodDays, let due = keyFile.nextRotationDue {
            rotation =
                "every \(days) days; next due \(due.formatted(.iso8601))\(status.rotationDue ? " (DUE NOW)" : "")"
        } else {
            rotation = "no rotation period set"
        }
        let kms: String
        switch status.kmsHealth {
        case .success(let health):
            kms = "reachable, key \(health.keyState), \(Self.milliseconds(health.latency)) ms"
        case .failure(let error):
            kms = "NOT REACHABLE: \(error.message)"
        }
        let lines = [
            ("database", status.databasePath),
            ("opens", status.openError.map { "NO: \($0.message)" } ?? "yes"),
            ("key file", keyFilePath),
            ("kms", keyFile.kms ?? "?"),
            ("kek", keyFile.kekId),
            ("dek version", String(keyFile.version)),
            ("created", keyFile.createdAt.formatted(.iso8601)),
            ("rotated", keyFile.rotatedAt.map { $0.formatted(.iso8601) } ?? "never"),
            ("rotation", rotation),
            ("kms health", kms),
            ("kek version", kekVersion(status)),
            ("page size", String(keyFile.cipher.pageSize)),
            ("format", formatDescription(status)),
            ("sqlcipher", "\(status.engine.version) (SQLite \(status.engine.sqliteVersion))"),
            ("key slots", slotsDescription(keyFile)),
        ]
        for (label, value) in lines {
            print("\((label + ":").padding(toLength: 13, withPad: " ", startingAt: 0)) \(value)")
        }
    }

    private func slotsDescription(_ keyFile: KeyFile) -> String {
        guard !keyFile.slots.isEmpty else { return "the primary only" }
        let others = keyFile.slots.map { "\($0.number) \($0.kms) \($0.kekId)" }
        return "the primary and " + others.joined(separator: ", ") + " (dbkey slot list)"
    }

    private func formatDescription(_ status: DatabaseKeyStatus) -> String {
        let cipher = status.keyFile.cipher
        let header = cipher.plaintextHeaderSize > 0 ? ", \(cipher.plaintextHeaderSize)-byte plaintext header" : ""
        let upgrade = status.upgradeAvailable ? " (upgrade: dbkey upgrade \(options.database))" : ""
        return "SQLCipher \(cipher.format)\(header)\(upgrade)"
    }

    private func kekVersion(_ status: DatabaseKeyStatus) -> String {
        guard let version = status.wrappedKekVersion else { return "not versioned" }
        guard case .success(let health) = status.kmsHealth, let latest = health.latestKekVersion else {
            return "\(version)"
        }
        return "\(version) of \(latest)\(status.wrappedUnderOlderKeyVersion ? " (OLDER than the newest: rewrap)" : "")"
    }

    /// `dbkey status --json`: the `.key`, the linked engine, whether the database opens and
    /// what the KMS says (`kms_key_state`, `kms_latency_ms` and `kek_latest_version` only when
    /// it answered).
    private struct StatusOutput: Encodable {
        let database, keyFile: String
        let kms: OrNull<String>
        let kekId: String
        let dekVersion: Int
        let createdAt, rotatedAt: OrNull<String>
        let rotationPeriodDays: OrNull<Int>
        let nextRotationDue: OrNull<String>
        let rotationDue: Bool
        let pageSize, sqlcipherFormat, plaintextHeaderSize: Int
        let upgradeAvailable: Bool
        let sqlcipherVersion, sqliteVersion: String
        let databaseOpens: Bool
        let databaseError: OrNull<ProblemOutput>
        let kekVersion: OrNull<String>
        let kekVersionOutdated: Bool
        let slots: [SlotOutput]
        let kmsReachable: Bool
        var kmsKeyState: String?
        var kmsLatencyMs: Double?
        var kekLatestVersion: OrNull<String>?
        let kmsError: OrNull<ProblemOutput>
    }

    private func printJSON(_ status: DatabaseKeyStatus, keyFilePath: String) {
        let keyFile = status.keyFile
        let health = try? status.kmsHealth.get()
        var kmsError: DBKeyError?
        if case .failure(let error) = status.kmsHealth {
            kmsError = error
        }
        Output.printJSON(
            StatusOutput(
                database: status.databasePath, keyFile: keyFilePath, kms: OrNull(keyFile.kms), kekId: keyFile.kekId,
                dekVersion: keyFile.version, createdAt: Output.timestamp(keyFile.createdAt),
                rotatedAt: Output.timestamp(keyFile.rotatedAt), rotationPeriodDays: OrNull(keyFile.rotationPeriodDays),
                nextRotationDue: Output.timestamp(keyFile.nextRotationDue), rotationDue: status.rotationDue,
                pageSize: keyFile.cipher.pageSize, sqlcipherFormat: keyFile.cipher.format,
                plaintextHeaderSize: keyFile.cipher.plaintextHeaderSize, upgradeAvailable: status.upgradeAvailable,
                sqlcipherVersion: status.engine.version, sqliteVersion: status.engine.sqliteVersion,
                databaseOpens: status.databaseOpens, databaseError: OrNull(status.openError.map(ProblemOutput.init)),
                kekVersion: OrNull(status.wrappedKekVersion), kekVersionOutdated: status.wrappedUnderOlderKeyVersion,
                slots: keyFile.slots.map { SlotOutput($0) }, kmsReachable: health != nil,
                kmsKeyState: health?.keyState, kmsLatencyMs: health.map { Self.milliseconds($0.latency) },
                kekLatestVersion: health.map { OrNull($0.latestKekVersion) },
                kmsError: OrNull(kmsError.map(ProblemOutput.init))))
    }

    private static func milliseconds(_ duration: Duration) -> Double {
        let (seconds, attoseconds) = duration.components
        return (Double(seconds) * 1000 + Double(attoseconds) / 1e15 * 1000).rounded() / 1000
    }
}
