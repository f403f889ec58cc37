import ArgumentParser
import SQLCipherKeyManager

/// How `recover` and `restore` may reach a data key besides the automatic slots: an escrow
/// private key, its recovery code (read from standard input, never from arguments), or one
/// provider's slot.
struct SlotAccessOptions: ParsableArguments {
    @Option(help: "An escrow private key file (PKCS#8 PEM, from dbkey escrow keygen or openssl genpkey).")
    var escrowPrivateKey: String?

    @Flag(help: "Read the escrow key's recovery code from standard input.")
    var recoveryCodeStdin = false

    @Option(help: "Use only this provider's slot (dbkey slot list).")
    var slot: Int?

    /// How many of the three were given.
    var namedCount: Int { [escrowPrivateKey != nil, recoveryCodeStdin, slot != nil].filter { $0 }.count }

    func validate() throws {
        guard namedCount <= 1 else {
            throw ValidationError("Name at most one of --escrow-private-key FILE, --recovery-code-stdin and --slot N.")
        }
    }

    /// The access named; `.automatic` when none is.
    func access() throws -> KeySlotAccess {
        if let escrowPrivateKey {
            return .escrow(try EscrowPrivateKey(pemFile: escrowPrivateKey))
        }
        if recoveryCodeStdin {
            return .escrow(try EscrowPrivateKey(recoveryCode: try Passphrase.fromStandardInput()))
        }
        return slot.map { .slot($0) } ?? .automatic
    }
}
