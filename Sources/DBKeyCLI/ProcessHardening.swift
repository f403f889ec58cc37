#if canImport(Glibc)
    import Glibc
#endif

/// What `dbkey` does to its own process before it touches a key.
enum ProcessHardening {
    /// Sets the core file size limit to zero, soft and hard, so that a crash never writes key
    /// material to disk (SecureBuffer's MADV_DONTDUMP covers its own pages; this covers copies
    /// made by libraries).
    ///
    /// - Returns: `false` if the kernel refused, which is reported and not fatal.
    static func disableCoreDumps() -> Bool {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        return setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit) == 0
    }
}
