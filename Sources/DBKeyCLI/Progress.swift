import Foundation
import SQLCipherKeyManager

/// Progress lines on stderr, only when stderr is a terminal: scripts and logs get nothing extra.
enum ProgressLine {
    /// A reporter for a key change, or `nil` when stderr is not a terminal.
    static func reporter(_ label: String) -> (@Sendable (KeyChangeProgress) -> Void)? {
        guard isatty(STDERR_FILENO) == 1 else { return nil }
        return { progress in
            var line = "\r\(label): \(megabytes(progress.bytesDone)) of \(megabytes(progress.bytesTotal)) MB"
            if let rate = progress.bytesPerSecond {
                line += String(format: ", %.1f MB/s", rate / 1_000_000)
            }
            if let remaining = progress.estimatedRemaining {
                line += ", \(remaining.components.seconds) s left"
            }
            try? FileHandle.standardError.write(contentsOf: Data((line + "\u{1B}[K").utf8))
        }
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
