import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Report everything that can go wrong with a database and its key, each with its fix.",
        discussion: """
            Read-only: file modes and owners, an interrupted key change, each slot's KMS, \
            KEK versions, rotation due, the .key against the database, leftover journals, \
            stale temporaries, room for a rotation. Exits 0 only when nothing was found, 1 \
            otherwise.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file (or --all DIR).")
    var database: String?

    @OptionGroup var fleet: FleetOptions

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        try FleetOptions.requireOne(database: database, fleet)
    }

    func run() async throws {
        guard let database else {
            let logger = common.makeLogger()
            let limiter = fleet.makeLimiter()
            let registry = fleet.registry(common, limiter: limiter, logger: logger)
            return try await fleet.run(json: json, limiter: limiter) { path in
                let report = await DatabaseKeyManager(databasePath: path, providers: registry, logger: logger).doctor()
                guard report.isHealthy else {
                    let checks = report.findings.map(\.check).joined(separator: ", ")
                    return .init(databasePath: path, status: .failed, detail: checks)
                }
                return .init(databasePath: path, status: .unchanged, detail: "all is well")
            }
        }
        let report = await common.existingDatabaseManager(database, logger: common.makeLogger()).doctor()
        if json {
            struct Finding: Encodable { let check, message, fix: String }
            struct Report: Encodable { let database: String, healthy: Bool, findings: [Finding] }
            Output.printJSON(
                Report(
                    database: database, healthy: report.isHealthy,
                    findings: report.findings.map { Finding(check: $0.check, message: $0.message, fix: $0.fix) }))
        } else if report.isHealthy {
            print("\(database): all is well.")
        } else {
            for finding in report.findings {
                print("\(finding.check): \(finding.message)\n  fix: \(finding.fix)")
            }
        }
        if !report.isHealthy {
            throw ExitCode(1)
        }
    }
}
