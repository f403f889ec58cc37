import Foundation
import SQLCipherKeyManager
import Synchronization

/// A command that hands out credentials (AWS's `credential_process`, the Azure CLI): run
/// without a shell and with no standard input, its output read whole, stopped when it outlives
/// its timeout.
package enum CredentialCommand {
    package struct Result {
        package let status: Int32
        /// What the command printed; the caller wipes it (``Foundation/Data/wipe()``).
        package var standardOutput: Data
        /// What it printed on standard error, for a message: never credentials, by convention.
        package let standardError: String
    }

    /// Runs `executable` with `arguments`.
    ///
    /// - Parameters:
    ///   - environment: The command's environment; `nil` for this process's.
    ///   - what: The command, for messages ("The credential_process /opt/creds").
    /// - Throws: ``DBKeyError/Code-swift.struct/kmsAccessDenied`` when it cannot be started,
    ///   ``DBKeyError/Code-swift.struct/kmsUnavailable`` when it is stopped at the timeout.
    package static func run(
        _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
        timeout: Duration? = nil, what: String
    ) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(
                    with: Swift.Result {
                        try runBlocking(executable, arguments, environment: environment, timeout: timeout, what: what)
                    })
            }
        }
    }

    private static func runBlocking(
        _ executable: String, _ arguments: [String], environment: [String: String]?, timeout: Duration?, what: String
    ) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw DBKeyError(.kmsAccessDenied, "\(what) cannot be started.")
        }
        let timedOut = Mutex(false)
        if let timeout {
            let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
            DispatchQueue.global().asyncAfter(deadline: .now() + seconds) {
                if process.isRunning {
                    timedOut.withLock { $0 = true }
                    // SIGKILL, not Process.terminate()'s SIGTERM: the command is started from a
                    // thread whose signal mask blocks SIGTERM (a Swift concurrency or Dispatch
                    // worker's, inherited), and inherits that mask, so SIGTERM would wait for it.
                    kill(process.processIdentifier, SIGKILL)
                }
            }
        }
        // Standard error is read beside standard output, so that neither pipe fills and stalls it.
        let errorText = Mutex(Data())
        let reading = DispatchGroup()
        reading.enter()
        Thread.detachNewThread {
            let read = errors.fileHandleForReading.readDataToEndOfFile()
            errorText.withLock { $0 = read }
            reading.leave()
        }
        var data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        reading.wait()
        if timedOut.withLock({ $0 }) {
            data.wipe()
            throw DBKeyError(
                .kmsUnavailable,
                "\(what) did not finish within \(timeout.map { "\($0)" } ?? "its time") and was stopped.")
        }
        return Result(
            status: process.terminationStatus, standardOutput: data,
            standardError: errorText.withLock { String(decoding: $0, as: UTF8.self) })
    }

    /// The first executable `name` in the directories of `path` (a `PATH` value), or `nil`.
    package static func find(_ name: String, in path: String) -> String? {
        path.split(separator: ":").map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
