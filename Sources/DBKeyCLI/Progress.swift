import Foundation
import SQLCipherKeyManager

/// Progress lines on stderr, only when stderr is a terminal: scripts and logs get nothing extra.
enum ProgressLine {
    /// A reporter for a key change, or `nil` when stderr is not a terminal.
    static func reporter() -> (@Sendable (KeyChangeProgress) -> Void)? {
        guard isatty(STDERR_FILENO) == 1 else { return nil }
        return { progress in
            switch progress.phase {
            case .verifying:
                write("\rverifying the encrypted copy (integrity check, row counts)…")
                return
            case .synchronizing:
                write("\rflushing the encrypted copy to the disk…")
                return
            case .copying, .rekeying:
                break
            }
            var line =
                "\r\(progress.phase.rawValue): \(megabytes(progress.bytesDone)) of \(megabytes(progress.bytesTotal)) MB"
            if let rate = progress.bytesPerSecond {
                line += String(format: ", %.1f MB/s", rate / 1_000_000)
            }
            if let remaining = progress.estimatedRemaining {
                line += ", \(remaining.components.seconds) s left"
            }
            write(line)
        }
    }

    private static func write(_ line: String) {
        try? FileHandle.standardError.write(contentsOf: Data((line + "\u{1B}[K").utf8))
    }

    /// Ends the progress line, if one was drawn.
    static func finish() {
        if isatty(STDERR_FILENO) == 1 {
            try? FileHandle.standardError.write(contentsOf: Data("\r\u{1B}[K".utf8))
        }
    }

    private static func megabytes(_ bytes: Int64) -> String {
        String(format: "%.1f", Double(bytes) / 1_000_000)
    }
}
