import Foundation
import SQLCipherKeyManager

/// What `dbkey` does to its own process before it touches a key.
enum ProcessHardening {
    /// Sets the core file size limit to zero, soft and hard, so that a crash never writes key
    /// material to disk (SecureBuffer's MADV_DONTDUMP covers its own pages; this covers copies
    /// made by libraries).
    ///
    /// - Returns: `false` if the kernel refused, which is reported and not fatal.
    static func disableCoreDumps() -> Bool {
        Platform.disableCoreDumps()
    }

    /// Flushes standard output and error and ends the process with `status` at once, without
    /// running exit handlers or library destructors.
    ///
    /// A library's destructors (SoftHSM's, in the tests that found it) may run while another
    /// thread still calls into it — a provider released by a task that finished after the
    /// command — and crash the process after its work is done. Everything `dbkey` writes is
    /// durable before it returns (`fsync`ed `.key` files, committed transactions), so nothing
    /// needs those handlers.
    static func exitNow(_ status: Int32) -> Never {
        fflush(nil)
        _exit(status)
    }

    /// Replaces the crash reporter's handlers with one that prints a fixed line and exits, so
    /// that a crash never prints registers or the memory around them (where page ciphertext or a
    /// key could be). Exits with 128 + the signal, as the default action would.
    static func quietCrashes() {
        for signal in [SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP] {
            _ = Foundation.signal(signal) { received in
                // Only async-signal-safe calls: a constant message, write(2), _exit(2).
                let message: StaticString =
                    "dbkey: crashed; no memory contents are printed. Report it with the command that was run.\n"
                _ = write(STDERR_FILENO, message.utf8Start, message.utf8CodeUnitCount)
                _exit(128 + received)
            }
        }
    }
}
