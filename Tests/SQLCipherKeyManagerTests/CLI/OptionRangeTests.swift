import Foundation
import SQLCipherKeyManager
import Testing

/// Every numeric option of `dbkey`, at and beyond its edges: out of range is exit 64 with the
/// range named, never a crash; in range goes on to do the work.
@Suite("dbkey numeric options", .tags(.cli))
struct OptionRangeTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let arguments: [String]
        let valid: Bool
        var testDescription: String { arguments.joined(separator: " ") + (valid ? " (valid)" : " (refused)") }
    }

    static let cases: [Case] = [
        // rotate --wait: seconds, finite, 0 to 86400 (Duration traps on inf and 1e308).
        .init(arguments: ["rotate", "DB", "--wait", "inf"], valid: false),
        .init(arguments: ["rotate", "DB", "--wait", "1e308"], valid: false),
        .init(arguments: ["rotate", "DB", "--wait", "nan"], valid: false),
        .init(arguments: ["rotate", "DB", "--wait", "-1"], valid: false),
        .init(arguments: ["rotate", "DB", "--wait", "86401"], valid: false),
        .init(arguments: ["rotate", "DB", "--wait", "0"], valid: true),
        .init(arguments: ["rotate", "DB", "--wait", "0.5"], valid: true),
        // init --page-size: a power of two from 1024 (512 cannot hold an encrypted page).
        .init(arguments: ["init", "NEW", "--page-size", "512"], valid: false),
        .init(arguments: ["init", "NEW", "--page-size", "1023"], valid: false),
        .init(arguments: ["init", "NEW", "--page-size", "0"], valid: false),
        .init(arguments: ["init", "NEW", "--page-size", "-4096"], valid: false),
        .init(arguments: ["init", "NEW", "--page-size", "131072"], valid: false),
        .init(arguments: ["init", "NEW", "--page-size", "1024"], valid: true),
        .init(arguments: ["init", "NEW", "--page-size", "65536"], valid: true),
        // --rotation-days: 1 to 36500.
        .init(arguments: ["init", "NEW", "--rotation-days", "0"], valid: false),
        .init(arguments: ["init", "NEW", "--rotation-days", "-1"], valid: false),
        .init(arguments: ["init", "NEW", "--rotation-days", "36501"], valid: false),
        .init(arguments: ["init", "NEW", "--rotation-days", "36500"], valid: true),
        // migrate --kdf-iter and --page-size of the old database.
        .init(arguments: ["migrate", "PLAIN", "--from-passphrase-env", "P", "--kdf-iter", "0"], valid: false),
        .init(arguments: ["migrate", "PLAIN", "--from-passphrase-env", "P", "--kdf-iter", "-5"], valid: false),
        .init(arguments: ["migrate", "PLAIN", "--from-passphrase-env", "P", "--page-size", "100"], valid: false),
        // --max-kms-rps: 0.001 to 1,000,000 (1e-10 overflowed the interval and crashed; 1e-9 hung).
        .init(arguments: ["rotate", "--all", "DIR", "--max-kms-rps", "1e-10"], valid: false),
        .init(arguments: ["rotate", "--all", "DIR", "--max-kms-rps", "1e-9"], valid: false),
        .init(arguments: ["rotate", "--all", "DIR", "--max-kms-rps", "0"], valid: false),
        .init(arguments: ["rotate", "--all", "DIR", "--max-kms-rps", "inf"], valid: false),
        .init(arguments: ["rotate", "--all", "DIR", "--max-kms-rps", "1e7"], valid: false),
        .init(arguments: ["rotate", "--all", "DIR", "--max-kms-rps", "100"], valid: true),
        // upgrade --page-size: as init's.
        .init(arguments: ["upgrade", "DB", "--page-size", "1000"], valid: false),
        .init(arguments: ["upgrade", "DB", "--page-size", "131072"], valid: false),
        // rewrap --wait: as rotate's.
        .init(arguments: ["rewrap", "DB", "--wait", "inf"], valid: false),
        .init(arguments: ["rewrap", "DB", "--wait", "2"], valid: true),
    ]

    @Test("out of range exits 64 naming the range; in range does the work", arguments: cases)
    func edges(option: Case) async throws {
        let workspace = try DBKeyCLITests.Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        let arguments = option.arguments.map {
            switch $0 {
            case "DB": workspace.database
            case "NEW": workspace.directory.file("new.db")
            case "PLAIN": workspace.directory.file("plain.db")
            case "DIR": workspace.directory.file("fleet")
            default: $0
            }
        }
        if option.arguments.contains("DIR") {
            // A fleet of one, apart from the workspace's master key file.
            try FileManager.default.createDirectory(
                atPath: workspace.directory.file("fleet"), withIntermediateDirectories: false)
            #expect(try await workspace.dbkey("init", workspace.directory.file("fleet/f.db")).status == 0)
        }
        let result = try await workspace.dbkey(arguments)
        if option.valid {
            #expect(result.status == 0, "\(result.stderr)")
            if arguments[0] == "init" {
                // Created means it opens again, as the next command will.
                let sql = try await workspace.dbkey("sql", workspace.directory.file("new.db"), "SELECT 1")
                #expect(sql.status == 0 && sql.stdout == "1\n", "\(sql.stderr)")
            }
        } else {
            #expect(result.status == 64, "\(result.status): \(result.stderr)")
            #expect(result.stderr.contains("must"), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: workspace.directory.file("new.db")))
        }
    }

    @Test("the library refuses a page size no encrypted page fits, before creating anything")
    func libraryPageSize() async throws {
        let directory = try TemporaryDirectory()
        for pageSize in [512, 1000, 131_072] {
            let manager = DatabaseKeyManager(
                databasePath: directory.file("p.db"), kms: try localKms(), configuration: .init(pageSize: pageSize),
                logger: silentLogger)
            await expectError(.invalidConfiguration, containing: ["1024 to 65536"]) { try await manager.initialize() }
            #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).isEmpty)
        }
    }
}
