import SystemPackage

/// How far a long key change (a rotation's rekey, a migration's export) has got.
public struct KeyChangeProgress: Sendable, Hashable {
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
                    bytesDone: min(written, total), bytesTotal: total, elapsed: ContinuousClock.now - start))
            try? await Task.sleep(for: .milliseconds(250))
        }
    }
}
