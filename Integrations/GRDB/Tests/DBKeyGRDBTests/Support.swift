import Foundation
import Logging
import SQLCipherKeyManager
import Testing

/// A scratch directory with a local master key file, removed when released.
final class Workspace: Sendable {
    let path: String
    let masterKeyFile: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/dbkey-grdb-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw CocoaError(.fileWriteUnknown) }
        path = String(cString: made)
        masterKeyFile = path + "/master.key"
        let key = try SecureBuffer.random(count: 32)
        let text = key.withUnsafeBytes { Data($0).base64EncodedString() }
        guard
            FileManager.default.createFile(
                atPath: masterKeyFile, contents: Data((text + "\n").utf8), attributes: [.posixPermissions: 0o600])
        else { throw CocoaError(.fileWriteUnknown) }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    var database: String { path + "/app.db" }

    /// What `dbkey` and the example app need: the master key file, and no home of the user's.
    var environment: [String: String] {
        [
            "PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": path,
            LocalKms.masterKeyFileVariable: masterKeyFile,
        ]
    }

    func kms() throws -> LocalKms {
        try LocalKms.fromEnvironment([LocalKms.masterKeyFileVariable: masterKeyFile], logger: silentLogger)
    }

    func manager() throws -> DatabaseKeyManager {
        DatabaseKeyManager(databasePath: database, kms: try kms(), logger: silentLogger)
    }

    /// The data key the `.key` file names now, as the hex `sqlcipher` takes, for a test that
    /// opens the database with the shell.
    func currentKeyHex() async throws -> String {
        let keyFile = try KeyFile.read(from: KeyFile.path(forDatabase: database))
        let key = try await kms().decrypt(
            keyFile.encryptedDek, kekId: keyFile.kekId, context: keyFile.encryptionContext)
        return key.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() }
    }
}

let silentLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// The programs built beside this test bundle.
enum Built {
    static let directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        .deletingLastPathComponent()
    /// The repository's own `dbkey` (Scripts/test builds it first), or `DBKEY_TEST_DBKEY`.
    static let dbkey =
        ProcessInfo.processInfo.environment["DBKEY_TEST_DBKEY"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../../../.build/debug/dbkey"
        )
        .standardizedFileURL.path
    static let exampleApp = directory.appendingPathComponent("dbkey-grdb-example-app").path
}

struct ProcessResult {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs a program to completion, on a thread of its own.
func run(_ executable: String, _ arguments: [String], input: String = "", environment: [String: String])
    async throws -> ProcessResult
{
    try await withCheckedThrowingContinuation { continuation in
        Thread {
            continuation.resume(
                with: Result {
                    let process = Process()
                    process.executableURL = URL(fileURLWithPath: executable)
                    process.arguments = arguments
                    process.environment = environment
                    let (stdin, stdout, stderr) = (Pipe(), Pipe(), Pipe())
                    process.standardInput = stdin
                    process.standardOutput = stdout
                    process.standardError = stderr
                    try process.run()
                    stdin.fileHandleForWriting.write(Data(input.utf8))
                    try stdin.fileHandleForWriting.close()
                    let errors = Mutexed(Data())
                    let drained = DispatchGroup()
                    DispatchQueue.global().async(group: drained) {
                        errors.set(stderr.fileHandleForReading.readDataToEndOfFile())
                    }
                    let output = stdout.fileHandleForReading.readDataToEndOfFile()
                    drained.wait()
                    process.waitUntilExit()
                    return ProcessResult(
                        status: process.terminationStatus, stdout: String(decoding: output, as: UTF8.self),
                        stderr: String(decoding: errors.get(), as: UTF8.self))
                })
        }.start()
    }
}

/// A value one thread writes and another reads after a wait.
final class Mutexed<Value>: @unchecked Sendable {
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func set(_ newValue: Value) { lock.withLock { value = newValue } }
    func get() -> Value { lock.withLock { value } }
}

/// Opens the database with the `sqlcipher` shell and `key` (hex, given on standard input, never
/// in argv): whether it reads the schema.
func shellOpens(_ database: String, keyHex: String) async throws -> Bool {
    let result = try await run(
        "/usr/bin/env", ["sqlcipher", database],
        input: "PRAGMA key = \"x'\(keyHex)'\";\nSELECT count(*) FROM sqlite_master;\n",
        environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"])
    return result.status == 0 && !result.stderr.contains("Error") && result.stdout.contains(where: \.isNumber)
}
