import ArgumentParser
import Foundation
import Logging
import SQLCipherKeyManager
import Synchronization

/// `--all DIR` and its companions, for the commands that work through many databases.
struct FleetOptions: ParsableArguments {
    @Option(help: "Every database under this directory (its .key files; symbolic links are never followed).")
    var all: String?

    @Flag(help: "With --all: say what would be done, change nothing.")
    var dryRun = false

    @Option(parsing: .unconditional, help: "With --all: databases worked on at once (1 to 64).")
    var jobs: Int = 4

    @Option(
        parsing: .unconditional,
        help: "With --all: at most this many KMS requests a second (a KMS that throttles slows the run further).")
    var maxKmsRps: Double?

    func validate() throws {
        guard (1...64).contains(jobs) else { throw ValidationError("--jobs must be from 1 to 64; got \(jobs).") }
        if let maxKmsRps, !(KmsRateLimiter.rates.contains(maxKmsRps)) {
            throw ValidationError(
                "--max-kms-rps must be from \(KmsRateLimiter.rates.lowerBound) to \(Int(KmsRateLimiter.rates.upperBound)) requests a second; got \(maxKmsRps)."
            )
        }
        if all == nil, dryRun || maxKmsRps != nil {
            throw ValidationError("--dry-run and --max-kms-rps go with --all.")
        }
    }

    /// The one database, or `--all`: exactly one of them.
    static func requireOne(database: String?, _ fleet: FleetOptions) throws {
        guard (database == nil) != (fleet.all == nil) else {
            throw ValidationError("Name a database, or --all DIR for every database under DIR.")
        }
    }

    /// The registry of this build, its KMS requests counted in `limiter` and held to
    /// `--max-kms-rps`.
    func registry(_ common: CommonOptions, limiter: KmsRateLimiter, logger: Logger) -> KmsRegistry {
        common.registry(logger: logger).rateLimited(limiter)
    }

    /// The counter (and limit) of this run's KMS requests.
    func makeLimiter() -> KmsRateLimiter {
        KmsRateLimiter(requestsPerSecond: maxKmsRps)
    }

    /// Runs `work` on every database under `--all`, with progress on a terminal, prints the
    /// summary (or, with `json`, everything) and fails with status 1 when any database failed.
    func run(
        json: Bool, limiter: KmsRateLimiter, _ work: @escaping @Sendable (String) async -> DatabaseFleet.Outcome
    ) async throws {
        let clock = ContinuousClock()
        let started = clock.now
        let found = try DatabaseFleet.discover(under: all ?? ".")
        let total = found.databases.count
        let counter = FleetCounter()
        let outcomes = await DatabaseFleet.run(
            found.databases, jobs: jobs,
            onOutcome: { outcome in
                let done = counter.add()
                if isatty(STDERR_FILENO) == 1 {
                    try? FileHandle.standardError.write(
                        contentsOf: Data(
                            "\r\(done) of \(total) databases (\(outcome.status.rawValue): \(outcome.databasePath))\u{1B}[K"
                                .utf8))
                }
            }, work)
        ProgressLine.finish()
        let elapsed = clock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let counts = Dictionary(grouping: outcomes, by: \.status).mapValues(\.count)
        if json {
            struct Database: Encodable { let database, status, detail: String }
            struct Refused: Encodable { let path, reason: String }
            struct Run: Encodable {
                /// Databases by status (`refused` too), `kms_requests` and `kms_throttled` (the
                /// throttling answers, each retried).
                let summary: [String: Int]
                /// The lowest rate (requests a second) throttling brought the run down to;
                /// absent when the KMS throttled none.
                let lowestKmsRate: Double?
                let seconds: Double
                let databases: [Database]
                let refused: [Refused]
            }
            Output.printJSON(
                Run(
                    summary: Dictionary(
                        uniqueKeysWithValues: DatabaseFleet.Outcome.Status.allCases.map {
                            ($0.rawValue, counts[$0] ?? 0)
                        }
                    ).merging([
                        "refused": found.refused.count, "kms_requests": limiter.requests,
                        "kms_throttled": limiter.throttled,
                    ]) { $1 },
                    lowestKmsRate: limiter.lowestRate.map { ($0 * 10).rounded() / 10 },
                    seconds: (seconds * 1000).rounded() / 1000,
                    databases: outcomes.map {
                        Database(database: $0.databasePath, status: $0.status.rawValue, detail: $0.detail)
                    },
                    refused: found.refused.map { Refused(path: $0.path, reason: $0.reason) }))
        } else {
            for outcome in outcomes where outcome.status == .failed || outcome.status == .skipped {
                print("\(outcome.status.rawValue): \(outcome.databasePath): \(outcome.detail)")
            }
            for refused in found.refused {
                print("refused: \(refused.path): \(refused.reason)")
            }
            let parts = DatabaseFleet.Outcome.Status.allCases.compactMap { status in
                counts[status].map { "\($0) \(status.rawValue)" }
            }
            let throttling = limiter.lowestRate.map {
                " (throttled \(limiter.throttled) times, each retried; slowed to \(String(format: "%.1f", $0)) a second)"
            }
            print(
                "\(total) databases: \((parts.isEmpty ? ["none"] : parts).joined(separator: ", ")); \(found.refused.count) refused; \(limiter.requests) KMS requests\(throttling ?? "") in \(String(format: "%.1f", seconds)) s."
            )
        }
        if counts[.failed, default: 0] > 0 {
            throw ExitCode(1)
        }
    }
}

/// Counts finished databases for the progress line.
final class FleetCounter: Sendable {
    private let count = Mutex(0)

    func add() -> Int {
        count.withLock {
            $0 += 1; return $0
        }
    }
}

extension DatabaseFleet.Outcome {
    /// The outcome of an error: `skipped` when the database is in use, `failed` otherwise.
    init(databasePath: String, error: any Error) {
        if let error = error as? DBKeyError {
            self.init(
                databasePath: databasePath, status: error.code == .databaseInUse ? .skipped : .failed,
                detail: "\(error.code): \(error.message)")
        } else {
            self.init(databasePath: databasePath, status: .failed, detail: "\(error)")
        }
    }
}
