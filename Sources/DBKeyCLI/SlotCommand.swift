import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct SlotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slot",
        abstract: "List, add and remove key slots: the data key under further KEKs or an escrow key.",
        discussion: """
            Slot 0 is the primary KEK. Another provider's slot opens the database while the \
            primary's KMS is unavailable; an escrow slot only through dbkey recover. Each change \
            is one atomic write of the .key file, made under the exclusive lock (see --wait).
            """,
        subcommands: [List.self, Add.self, Remove.self]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a options.database's key slots.")

        @OptionGroup var options: DatabaseOptions

        func run() async throws {
            try await options.run { manager in
                let keyFile = try manager.load()
                SlotCommand.print(keyFile, database: options.database, json: options.json)
            }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a slot: the data key under another KEK, or sealed to an escrow public key.")

        @OptionGroup var options: DatabaseOptions

        @Option(help: "The KEK of the new slot, as a URI (local:///PATH, aws-kms://…, vault://…, pkcs11:…).")
        var kek: String?

        @Option(help: "An escrow public key file (PEM, from dbkey escrow keygen or openssl pkey -pubout).")
        var escrowPublicKey: String?

        @OptionGroup var wait: WaitOption

        func validate() throws {
            guard (kek == nil) != (escrowPublicKey == nil) else {
                throw ValidationError("Name exactly one of --kek URI and --escrow-public-key FILE.")
            }
        }

        func run() async throws {
            try await options.run { manager in
                let keyFile: KeyFile
                if let kek {
                    let target = try options.common.registry(logger: options.common.makeLogger()).target(forURI: kek)
                    keyFile = try await manager.addSlot(target.provider, kekId: target.kekId, wait: wait.duration)
                } else {
                    keyFile = try await manager.addEscrowSlot(
                        try EscrowPublicKey(pemFile: escrowPublicKey ?? ""), wait: wait.duration)
                }
                SlotCommand.print(keyFile, database: options.database, json: options.json)
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove a slot; --rotate also rotates the data key in the same step.",
            discussion: """
                Removing a slot revokes nothing while older copies of the .key file exist (in \
                backups): they still hold the data key under the removed KEK. With --rotate the \
                data key is rotated in the same journaled change, so those copies open nothing.
                """
        )

        @OptionGroup var options: DatabaseOptions

        @Argument(help: "The slot's number (dbkey slot list).")
        var slot: Int

        @Flag(help: "Rotate the data key in the same step, so that older .key copies become useless.")
        var rotate = false

        @OptionGroup var wait: WaitOption

        func run() async throws {
            try await options.run { manager in
                let before = try? manager.load()
                let keyFile = try await manager.removeSlot(slot, rotate: rotate, wait: wait.duration)
                Output.warnUnsafeEscrowSlotsLeftOut(
                    before: before, after: keyFile, database: options.database, removing: slot)
                if !rotate {
                    Output.printWarning(
                        "slot \(slot) is gone from \(manager.keyFilePath), but any older copy of that file (a backup) still opens the options.database through it. To make such copies useless, rotate the data key (dbkey rotate \(options.database))."
                    )
                }
                SlotCommand.print(keyFile, database: options.database, json: options.json)
            }
        }
    }

    static func print(_ keyFile: KeyFile, database: String, json: Bool) {
        if json {
            struct Slots: Encodable { let database: String, dekVersion: Int, slots: [SlotOutput] }
            Output.printJSON(
                Slots(
                    database: database, dekVersion: keyFile.version,
                    slots: keyFile.allSlots.map { SlotOutput($0, withKind: true) }))
            return
        }
        Swift.print("Key slots of \(database) (data key version \(keyFile.version)):")
        for slot in keyFile.allSlots {
            let role = slot.number == 0 ? "primary" : slot.isEscrow ? "escrow (recover only)" : "standby"
            Swift.print("  \(slot.number)  \(slot.kms)  \(slot.kekId)  \(role)")
        }
    }
}

/// `--wait SECONDS`, for commands that take the exclusive lock.
struct WaitOption: ParsableArguments {
    @Option(
        name: .customLong("wait"), parsing: .unconditional,
        help: "Seconds to wait for other connections to close (0 to 86400).")
    var seconds: Double = 0

    func validate() throws {
        // Finite and bounded: Duration traps on an infinite or huge number of seconds.
        guard seconds.isFinite, (0...86_400).contains(seconds) else {
            throw ValidationError("--wait must be a number of seconds from 0 to 86400; got \(seconds).")
        }
    }

    var duration: Duration { .seconds(seconds) }
}
