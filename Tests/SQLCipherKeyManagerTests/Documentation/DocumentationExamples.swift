import CSQLCipher
import DBKeyCLI
import Foundation
import Logging
import SQLCipherKeyManager
import SQLCipherKeyManagerConformance
import Testing

// Every Swift example of the README and the DocC articles, as compiled code: the test below
// finds each example's lines here (or in ExampleKms.swift), so an example that stops compiling
// fails the build, and one that drifts from this file fails the test.

@Test func exampleProviderConforms() async throws {
    let kms = ExampleKms(kekNames: ["k1"])
    try await KmsConformanceSuite(kekId: "k1") { kms }.run()
}

enum DocumentationExamples {
    static func library(databasePath: String) async throws {
        let logger = Logger(label: "app.db")
        let kms = try LocalKms.fromEnvironment(logger: logger)
        let manager = LocalDbKeyManager(
            databasePath: databasePath,
            kms: kms,
            configuration: .init(encryptionContext: ["purpose": "field-notes"], rotationPeriodDays: 90),
            logger: logger
        )

        if !FileManager.default.fileExists(atPath: manager.keyFilePath) {
            try await manager.initialize()  // first launch: new DEK, new encrypted database, app.db.key
        }
        let db = try await manager.open()  // each start: unwrap, open, prove the key
        try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
        try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
        let rows = try db.fetchAll("SELECT id, body FROM note")
        _ = rows
    }

    static func gettingStarted(databasePath: String) async throws {
        let logger = Logger(label: "app.db")
        let manager = LocalDbKeyManager(
            databasePath: databasePath,
            kms: try LocalKms.fromEnvironment(logger: logger),
            configuration: .init(encryptionContext: ["purpose": "field-notes"], rotationPeriodDays: 90),
            logger: logger
        )
        if !FileManager.default.fileExists(atPath: manager.keyFilePath) {
            try await manager.initialize()
        }
        let db = try await manager.open()
        try db.execute("CREATE TABLE IF NOT EXISTS note(id INTEGER PRIMARY KEY, body TEXT)")
        try db.execute("INSERT INTO note(body) VALUES (?)", arguments: ["hello"])
        let rows = try db.fetchAll("SELECT id, body FROM note")
        _ = rows
    }

    static func errors(manager: LocalDbKeyManager) async throws {
        do {
            _ = try await manager.open()
        } catch DBKeyError.Code.kmsUnavailable {
            // Nothing was changed: try again later.
        } catch let error as DBKeyError {
            print(error.code, error.path ?? "-", error.message)
        }
    }

    static func keyChanges(manager: LocalDbKeyManager, newMaster: SecureBuffer) async throws {
        try await manager.rotateKey(wait: .seconds(30))  // new DEK, rekey
        try await manager.rewrap(to: try LocalKms(masterKey: newMaster), kekId: "default")  // same DEK, new KEK
        try await manager.migrate(from: .plaintext)  // bring an existing database in
        try await manager.migrate(from: .passphrase(try Passphrase.fromFile("old.pass"), .init(kdfIterations: 4000)))
    }

    static func rotateWhenDue(manager: LocalDbKeyManager) async throws {
        if try manager.needsRotation() {
            try await manager.rotateKey(wait: .seconds(30))
        }
        try await manager.rewrap(to: try LocalKms(masterKey: try SecureBuffer.random(count: 32)), kekId: "default")
    }

    static func registry(databasePath: String, logger: Logger) throws -> LocalDbKeyManager {
        let registry = KmsRegistry(providers: [
            try LocalKms.fromEnvironment(logger: logger), ExampleKms(kekNames: ["k1"]),
        ])
        let manager = LocalDbKeyManager(
            databasePath: databasePath,
            providers: registry,
            configuration: .init(kekId: "k1", kekProvider: "example"),
            logger: logger
        )
        return manager
    }

    static func keyingSeam(manager: LocalDbKeyManager) async throws {
        let key = try await manager.getOrCreateKey()
        var handle: OpaquePointer?
        guard sqlite3_open_v2(manager.databasePath, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK, let handle else {
            throw DBKeyError(.io, "cannot open the database")
        }
        try key.apply(to: handle)
        // … statements on handle …
        sqlite3_close_v2(handle)
        key.release()
    }

    static func dbkeyWithExample() async {
        await DBKeyCommand.main(providers: [
            LocalKms.factory,
            KmsProviderFactory(providerName: "example", uriScheme: "example") { _, _ in ExampleKms(kekNames: ["k1"]) },
        ])
    }
}

@Suite("Documentation examples")
struct DocumentationExamplesTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The lines that matter: no blank lines, comments or imports; leading and trailing space
    /// folded.
    static func codeLines(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .map { line in
                line.range(of: "//").map { String(line[..<$0.lowerBound]).trimmingCharacters(in: .whitespaces) } ?? line
            }
            .filter { !$0.isEmpty && !$0.hasPrefix("import ") }
    }

    /// The Swift code blocks of a Markdown file, except those marked as not compiled.
    static func swiftBlocks(in path: String) throws -> [String] {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(
            separator: "\n", omittingEmptySubsequences: false)
        var blocks: [String] = []
        var index = 0
        while index < lines.count {
            if lines[index].trimmingCharacters(in: .whitespaces) == "```swift" {
                let marked = index > 0 && lines[index - 1].contains("<!-- not compiled")
                var body: [Substring] = []
                index += 1
                while index < lines.count, lines[index].trimmingCharacters(in: .whitespaces) != "```" {
                    body.append(lines[index])
                    index += 1
                }
                if !marked { blocks.append(body.joined(separator: "\n")) }
            }
            index += 1
        }
        return blocks
    }

    @Test("every Swift example in the README and the DocC catalogue is code this test target compiles")
    func examplesCompile() throws {
        let docc = Self.root.appendingPathComponent("Sources/SQLCipherKeyManager/Documentation.docc").path
        let articles = try FileManager.default.contentsOfDirectory(atPath: docc).filter { $0.hasSuffix(".md") }
            .map { docc + "/" + $0 }
        let sources = [
            URL(fileURLWithPath: #filePath).path,
            Self.root.appendingPathComponent("Tests/SQLCipherKeyManagerTests/Providers/Example/ExampleKms.swift").path,
        ].map { Self.codeLines((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }
        var checked = 0
        for file in [Self.root.appendingPathComponent("README.md").path] + articles {
            for block in try Self.swiftBlocks(in: file) {
                let wanted = Self.codeLines(block)
                guard !wanted.isEmpty else { continue }
                let found = sources.contains { source in
                    source.indices.contains { start in
                        start + wanted.count <= source.count && Array(source[start..<start + wanted.count]) == wanted
                    }
                }
                #expect(found, "an example in \(file) is not compiled code:\n\(block)")
                checked += 1
            }
        }
        #expect(checked >= 10, "found \(checked) examples")
    }
}
