import ArgumentParser
import SQLCipherKeyManager

struct VerifyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Unwrap the key, check it, open the database and run PRAGMA integrity_check.",
        discussion: "Exits 0 only when every check passes; otherwise prints the reason and exits with its status."
    )

    @OptionGroup var options: DatabaseOptions

    func run() async throws {
        try await options.run { manager in
            let report = try await manager.verify()
            if options.json {
                struct Verified: Encodable {
                    let database: String
                    let ok = true
                    let keyCheck: String
                    let dekVersion: Int
                    let pageCount: Int64
                }
                Output.printJSON(
                    Verified(
                        database: options.database, keyCheck: report.keyCheckVerified ? "verified" : "absent",
                        dekVersion: report.keyFile.version, pageCount: report.pageCount))
            } else {
                print("key file:     valid")
                print("key unwrap:   ok (\(report.keyFile.kms ?? "?") KEK \(report.keyFile.kekId))")
                print("key check:    \(report.keyCheckVerified ? "ok" : "absent (older .key file)")")
                print("database:     opens with key version \(report.keyFile.version)")
                print("integrity:    ok (\(report.pageCount) pages)")
            }
        }
    }
}
