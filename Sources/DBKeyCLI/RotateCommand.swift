import ArgumentParser
import SQLCipherKeyManager

struct RotateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Rotate the data key: a new DEK from the KMS, every page re-encrypted under it.",
        discussion: """
            Crash-safe: the change is journaled in the .key file, and the next open finishes or \
            undoes a rotation that was interrupted. The pages are re-encrypted on every core into \
            a copy beside the database (it needs the database's size free), which replaces it; \
            --in-place uses PRAGMA rekey instead. Needs the database closed by every other \
            process (see --wait). A database a running app keeps open in a ConnectionPool is \
            rotated by the app: --request asks it to. To change only the KEK, use rewrap.
            """
    )

    @OptionGroup var common: CommonOptions

    @Argument(help: "The database file (or --all DIR).")
    var database: String?

    @OptionGroup var fleet: FleetOptions

    @Flag(help: "Rotate only if rotation_period_days says the key is due.")
    var ifDue = false

    @OptionGroup var wait: WaitOption

    @Flag(help: "Leave out the key slots whose KMS cannot wrap the new key, instead of failing.")
    var dropUnreachableSlots = false

    @Flag(
        help: ArgumentHelp(
            "Re-encrypt with PRAGMA rekey in place instead of into a copy.",
            discussion:
                "For a disk without room for a copy: SQLite's journal still needs about the database's size, and it is 3 to 5 times slower."
        ))
    var inPlace = false

    @Flag(
        help: ArgumentHelp(
            "Ask the running app that holds the database to rotate it, and wait for its answer.",
            discussion:
                "The app's ConnectionPool must answer rotation requests (answeringRotationRequests). --wait bounds the whole wait (60 s when not given): no app taking the request withdraws it (exit 30); an app still rotating then finishes on its own (exit 33); an app that stops after taking it is reported at once (exit 31)."
        ))
    var request = false

    @Flag(help: "Print the result as JSON.")
    var json = false

    func validate() throws {
        try FleetOptions.requireOne(database: database, fleet)
        if request && (database == nil || ifDue) {
            throw ValidationError("--request rotates one database, without --all or --if-due.")
        }
        if request && inPlace {
            throw ValidationError("--request lets the app rotate as it does; --in-place cannot be asked of it.")
        }
    }

    func run() async throws {
        try await common.reportingErrors(json: json) {
            guard let database else { return try await rotateAll() }
            let manager = common.existingDatabaseManager(database, logger: common.makeLogger())
            if ifDue, try !manager.needsRotation() {
                let keyFile = try manager.load()
                if json {
                    struct NotDue: Encodable {
                        let database: String
                        let rotated = false
                        let dekVersion: Int
                    }
                    Output.printJSON(NotDue(database: database, dekVersion: keyFile.version))
                } else {
                    print("Not due: key version \(keyFile.version) stays.")
                }
                return
            }
            let before = try? manager.load()
            let keyFile: KeyFile
            if request {
                keyFile = try await manager.requestRotation(
                    timeout: wait.seconds > 0 ? wait.duration : .seconds(60), dropUnreachableSlots: dropUnreachableSlots
                )
            } else {
                keyFile = try await manager.rotateKey(
                    wait: wait.duration, dropUnreachableSlots: dropUnreachableSlots, inPlace: inPlace,
                    progress: ProgressLine.reporter())
                ProgressLine.finish()
            }
            Output.warnUnsafeEscrowSlotsLeftOut(before: before, after: keyFile, database: database)
            if json {
                struct Rotated: Encodable {
                    let rotated = true
                    let rotatedAt: OrNull<String>
                }
                Output.printJSON(
                    KeyOutput(database: database, keyFile, Rotated(rotatedAt: Output.timestamp(keyFile.rotatedAt))))
            } else {
                print("Rotated \(database) to key version \(keyFile.version).")
            }
        }
    }

    /// `--all`: every database under the directory; databases in use are skipped and reported.
    private func rotateAll() async throws {
        let logger = common.makeLogger()
        let limiter = fleet.makeLimiter()
        let registry = fleet.registry(common, limiter: limiter, logger: logger)
        let (ifDue, dryRun, dropUnreachableSlots, wait, inPlace) = (
            ifDue, fleet.dryRun, dropUnreachableSlots, wait.duration, inPlace
        )
        try await fleet.run(json: json, limiter: limiter) { path in
            do {
                let manager = DatabaseKeyManager(databasePath: path, providers: registry, logger: logger)
                if ifDue, try !manager.needsRotation() {
                    return .init(databasePath: path, status: .unchanged, detail: "not due")
                }
                if dryRun {
                    return .init(databasePath: path, status: .wouldChange, detail: "would rotate")
                }
                let before = try? manager.load()
                let rotated = try await manager.rotateKey(
                    wait: wait, dropUnreachableSlots: dropUnreachableSlots, inPlace: inPlace)
                Output.warnUnsafeEscrowSlotsLeftOut(before: before, after: rotated, database: path)
                return .init(databasePath: path, status: .done, detail: "rotated to key version \(rotated.version)")
            } catch {
                return .init(databasePath: path, error: error)
            }
        }
    }
}
