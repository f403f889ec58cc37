import ArgumentParser
import Foundation
import SQLCipherKeyManager

struct EscrowCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "escrow",
        abstract: "Make escrow keys: break-glass recovery that needs no KMS.",
        subcommands: [Keygen.self]
    )

    struct Keygen: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new X25519 escrow key: the private key to OUT (0600), the public key to OUT.pub.",
            discussion: """
                Keep the private key offline (a safe, a hardware token, a person); give only \
                OUT.pub to dbkey init --escrow-public-key or dbkey slot add. Both files are PEM \
                and OpenSSL reads them. --recovery-code also prints the private key as a code a \
                person can type back (dbkey recover --recovery-code-stdin).
                """
        )

        @Argument(help: "The private key file to create.")
        var out: String

        @Flag(
            help:
                "Also print the private key as a recovery code, alone on standard output (the rest goes to standard error)."
        )
        var recoveryCode = false

        @Flag(help: "Print the result as JSON.")
        var json = false

        @OptionGroup var common: CommonOptions

        func validate() throws {
            guard !(recoveryCode && json) else {
                throw ValidationError(
                    "--recovery-code prints the code on a line of its own; it does not go with --json.")
            }
        }

        func run() async throws {
            try await common.reportingErrors(json: json) {
                let key = try EscrowPrivateKey.generate()
                let publicPath = out + ".pub"
                try key.write(to: out)
                if json {
                    struct Made: Encodable { let privateKey, publicKey, escrowKeyId: String }
                    Output.printJSON(Made(privateKey: out, publicKey: publicPath, escrowKeyId: key.publicKey.id))
                } else if recoveryCode {
                    // Standard output carries the code alone, so that it can go straight to
                    // recover --recovery-code-stdin; the label goes to standard error.
                    Output.printNote(
                        "Escrow key \(key.publicKey.id): private key \(out), public key \(publicPath); its recovery code follows on standard output."
                    )
                } else {
                    print("Escrow key \(key.publicKey.id): private key \(out), public key \(publicPath).")
                }
                if recoveryCode {
                    // Straight to the descriptor, from locked memory, after what print buffered.
                    fflush(nil)
                    key.recoveryCode.withUnsafeBytes { _ = write(STDOUT_FILENO, $0.baseAddress, $0.count) }
                    _ = write(STDOUT_FILENO, "\n", 1)
                }
            }
        }
    }
}
