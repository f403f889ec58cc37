import SystemPackage

/// How far a long key change (a rotation's rekey, a migration's export) has got.
public struct KeyChangeProgress: Sendable, Hashable {
    /// The step a key change is in.
    public enum Phase: String, Sendable, Hashable, CaseIterable {
        /// Re-encrypting every page in place (a rotation's `PRAGMA rekey`).
        case rekeying
        /// Writing the encrypted copy (a migration's `sqlcipher_export`).
        case copying
        /// Checking the copy: `integrity_check` and every table's row count.
        case verifying
        /// Flushing the copy to the disk (`fsync`).
        case synchronizing
    }

    /// The step the change is in; the byte counts are those of the copying or rekeying step.
    public let phase: Phase
    /// Bytes processed so far, estimated from the size of the journal, WAL or new file.
    public let bytesDone: Int64
    /// The database's size.
    public let bytesTotal: Int64
    /// Time since the step began.
    public let elapsed: Duration

    /// Bytes per second so far, or `nil` before there is anything to measure.
    public var bytesPerSecond: Double? {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return seconds > 0 && bytesDone > 0 ? Double(bytesDone) / seconds : nil
    }

    /// The estimated time left, or `nil` when it cannot be estimated yet.
    public var estimatedRemaining: Duration? {
        guard let rate = bytesPerSecond else { return nil }
        return .seconds(Double(max(0, bytesTotal - bytesDone)) / rate)
    }
}

/// Samples the sizes of the files a key change writes, every 250 ms, until cancelled.
func reportProgress(
    of files: [String],
    total: Int64,
    phase: KeyChangeProgress.Phase,
    to progress: (@Sendable (KeyChangeProgress) -> Void)?
) -> Task<Void, Never>? {
    guard let progress else { return nil }
    return Task {
        let start = ContinuousClock.now
        while !Task.isCancelled {
            let written = files.reduce(Int64(0)) { sum, path in
                sum + ((try? FilePath(path).stat().size) ?? 0)
            }
            progress(
                KeyChangeProgress(
                    phase: phase, bytesDone: min(written, total), bytesTotal: total,
                    elapsed: ContinuousClock.now - start))
            try? await Task.sleep(for: .milliseconds(250))
        }
    }
}
