import Foundation
import Logging
@testable import SQLCipherKeyManager
import Synchronization
import Testing

/// The repository's root, found from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Whether the tests run in CI, where a missing tool fails a test instead of skipping it.
let isCI = ProcessInfo.processInfo.environment["CI"] != nil

/// A directory of its own for one test, removed when released.
final class TemporaryDirectory: Sendable {
    let path: String

    init() throws {
        let template = NSTemporaryDirectory() + "dbkey-test-XXXXXX"
        var bytes = Array(template.utf8CString)
        guard let created = mkdtemp(&bytes) else {
            throw DBKeyError(.io, "mkdtemp failed")
        }
        path = String(cString: created)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path)
    }

    func file(_ name: String) -> String { path + "/" + name }
}

/// A trace-level logger that records every line, and the lines it recorded.
final class LogCapture: Sendable {
    private let storage = Mutex<[String]>([])

    var logger: Logger {
        var logger = Logger(label: "test") { _ in Handler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    var lines: [String] { storage.withLock { $0 } }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            capture.storage.withLock { $0.append("\(event.level) \(event.message) \(all)") }
        }
    }
}

/// `DBKEY_ALLOW_SQLCIPHER3_DATABASES` as the test process has it (Scripts/test sets it on the
/// SQLCipher 3 run), for the programs the tests start with an environment of their own.
let allowSQLCipher3Databases =
    ProcessInfo.processInfo.environment[DatabaseKeyManager.Configuration.allowSQLCipher3DatabasesVariable] ?? "0"

/// A logger that discards everything.
let silentLogger = Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }

/// The result of running a program.
struct ProcessResult {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs blocking work on a thread of its own, so that waiting for a child process never holds
/// one of the cooperative pool's few threads (tests run in parallel on them).
func offPool<Result: Sendable>(_ work: @escaping @Sendable () throws -> Result) async throws -> Result {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Swift.Result { try work() }) }.start()
    }
}

/// Runs a program to completion with `input` on its standard input.
func run(_ executable: String, _ arguments: [String], input: String = "", environment: [String: String]? = nil)
    async throws -> ProcessResult
{
    try await offPool { try runBlocking(executable, arguments, input: input, environment: environment) }
}

private func runBlocking(
    _ executable: String,
    _ arguments: [String],
    input: String,
    environment: [String: String]?
) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment {
        process.environment = environment
    }
    let stdin = Pipe()
    let stdout = Pipe()
    let stderr = Pipe()
    process.standardInput = stdin
    process.standardOutput = stdout
    process.standardError = stderr
    try process.run()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    // Drain stderr on a Dispatch thread while this one drains stdout, so that a child writing a
    // lot to both cannot block on a full pipe.
    let errorOutput = PipeOutput()
    let drained = DispatchGroup()
    DispatchQueue.global().async(group: drained) {
        errorOutput.data = stderr.fileHandleForReading.readDataToEndOfFile()
    }
    let outputData = stdout.fileHandleForReading.readDataToEndOfFile()
    drained.wait()
    process.waitUntilExit()
    return ProcessResult(
        status: process.terminationStatus,
        stdout: String(decoding: outputData, as: UTF8.self),
        stderr: String(decoding: errorOutput.data, as: UTF8.self)
    )
}

/// What one thread read from a pipe; written once before the group is left, read after.
private final class PipeOutput: @unchecked Sendable {
    var data = Data()
}

/// The full path of a program on `PATH`. Fails the test (never skips) when it is missing.
func requireTool(_ name: String, installedBy package: String) throws -> String {
    for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let candidate = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
    }
    Issue.record("\(name) is not installed: run Scripts/setup (it installs \(package)).")
    throw DBKeyError(.invalidConfiguration, "\(name) missing")
}

/// Lowercase hex of a secure buffer's bytes. Tests only: it copies key material into a String.
func hex(_ buffer: SecureBuffer) -> String {
    buffer.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() }
}

/// A buffer from hex. Tests only.
func secureBuffer(hex: String) -> SecureBuffer {
    let bytes = stride(from: 0, to: hex.count, by: 2).map { offset -> UInt8 in
        let start = hex.index(hex.startIndex, offsetBy: offset)
        return UInt8(hex[start..<hex.index(start, offsetBy: 2)], radix: 16)!
    }
    return bytes.withUnsafeBytes { SecureBuffer(copying: $0) }
}

/// A fixed master key for tests, base64.
let testMasterKeyBase64 = Data((0..<32).map { UInt8($0) }).base64EncodedString()

/// A local provider over a fixed or given master key.
func localKms(masterKeyBase64: String = testMasterKeyBase64) throws -> LocalKms {
    try LocalKms.fromEnvironment([LocalKms.masterKeyVariable: masterKeyBase64], logger: silentLogger)
}

/// The file's bytes, to show a failed operation left it untouched.
func contents(_ path: String) throws -> Data {
    try Data(contentsOf: URL(fileURLWithPath: path))
}

/// Runs the Python reference implementation of the local wrap format.
func pythonLocalKms(_ request: [String: Any]) async throws -> [String: String] {
    let python = try requireTool("python3", installedBy: "python3")
    let input = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
    let result = try await run(python, [repositoryRoot.path + "/Scripts/interop/local_kms.py"], input: input)
    #expect(result.status == 0, "local_kms.py failed: \(result.stderr)")
    let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
    return try #require(object as? [String: String])
}

/// Runs `body` and checks it throws a ``DBKeyError`` with `code` whose message contains every
/// fragment. Returns the error for further checks.
@discardableResult
func expectError(
    _ code: DBKeyError.Code,
    containing fragments: [String] = [],
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async -> DBKeyError? {
    do {
        try await body()
        Issue.record("Expected a \(code) error; nothing was thrown.", sourceLocation: sourceLocation)
        return nil
    } catch let error as DBKeyError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(
                error.message.contains(fragment), "\"\(fragment)\" not in: \(error.message)",
                sourceLocation: sourceLocation)
        }
        return error
    } catch {
        Issue.record("Expected a DBKeyError \(code); got \(error).", sourceLocation: sourceLocation)
        return nil
    }
}

/// A variable `Scripts/test` sets to describe a server or token it started for the tests. When
/// it is missing the test records an issue and fails: a test that needs a server never passes
/// without one.
func scriptVariable(_ name: String, describing what: String) throws -> String {
    guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
        Issue.record("No \(what): \(name) is not set. Run the tests with Scripts/test, which starts it.")
        throw DBKeyError(.kmsUnavailable, "no \(what) for the tests")
    }
    return value
}

extension DatabaseKeyManager {
    /// The data key's bytes, for tests that compare keys or hand them to the `sqlcipher` shell;
    /// the key's lock is released at once.
    func dataKey() async throws -> SecureBuffer {
        let key = try await leaseKey()
        defer { key.release() }
        return key.key
    }
}

/// Data made by others (SQLCipher's compatibility databases, AWS's SigV4 suite), read from
/// `../shared/fixtures` and never copied into the repository.
enum ThirdPartyFixture {
    /// `../shared/fixtures`, or the folder `DBKEY_TEST_FIXTURES` names (to try a clone without
    /// them: `DBKEY_TEST_FIXTURES=/nonexistent swift test`).
    static let root =
        ProcessInfo.processInfo.environment["DBKEY_TEST_FIXTURES"]
        ?? repositoryRoot.deletingLastPathComponent().path + "/shared/fixtures"

    /// A test trait: under `CI=true` the test always runs (and fails when the fixture is
    /// missing); elsewhere — a clone without `../shared` beside it — it is skipped with one line
    /// naming the file and where it comes from.
    static func required(_ relativePath: String, from origin: String) -> ConditionTrait {
        .enabled(
            if: isCI || FileManager.default.fileExists(atPath: root + "/" + relativePath),
            "skipped: ../shared/fixtures/\(relativePath) is missing (\(origin)); CI always runs this test"
        )
    }

    static let sqlcipherCompat = "SQLCipher's compatibility databases, from its source tree's test/ folder"
    static let sigV4 = "AWS's Signature Version 4 test suite"
}

/// The cipher settings DBKey gives a new database on the linked SQLCipher (the 4 format on
/// 4.x, the 3 format on 3.x), with `pageSize`.
func newCipher(pageSize: Int = 4096) throws -> CipherSettings {
    CipherSettings.new(format: try SQLCipherEngine.linked().newDatabaseFormat, pageSize: pageSize)
}

/// The SQLCipher version the test run requires (`DBKEY_TEST_SQLCIPHER_VERSION`, set by
/// Scripts/test from the engine it built against), or `nil` outside Scripts/test.
let expectedSQLCipherVersion = ProcessInfo.processInfo.environment["DBKEY_TEST_SQLCIPHER_VERSION"]

/// Makes what DBKey made on SQLCipher 3.4.1 before the `.key` recorded the format: a database
/// in the SQLCipher 3 format (4096-byte pages) with `rows` rows in `t(x)`, under a new data key
/// from `kms`, and its format-2 `.key` (sealed, with salt and page size, no `compatibility`).
///
/// - Returns: The data key.
@discardableResult
func makeFormat3Database(
    path: String, kms: any KeyManagementService, kekId: String, rows: Int = 0, pageSize: Int = 4096
) async throws -> SecureBuffer {
    let dataKey = try await kms.generateDataKey(kekId: kekId, context: .empty)
    let cipher = CipherSettings(pageSize: pageSize)
    let db = try DatabaseConnection.open(path: path, key: dataKey.plaintext, cipher: cipher, create: true)
    try db.execute("CREATE TABLE t(x)")
    try db.inTransaction {
        for row in 0..<rows { try db.execute("INSERT INTO t VALUES (?)", arguments: [.integer(Int64(row))]) }
    }
    db.close()
    var keyFile = KeyFile(
        kms: kms.providerName, kekId: dataKey.kekId, encryptedDek: dataKey.wrapped, createdAt: KeyFile.now(),
        encryptionContext: .empty, keyCheck: KeyCheck(for: dataKey.plaintext), rotationPeriodDays: nil,
        cipher: CipherSettings(
            pageSize: pageSize, sqlcipherVersion: "3.4.1", salt: Array(try contents(path).prefix(16))))
    keyFile.format = 2
    try keyFile.sealed(with: dataKey.plaintext).write(to: path + ".key")
    return dataKey.plaintext
}
