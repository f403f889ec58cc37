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
}
