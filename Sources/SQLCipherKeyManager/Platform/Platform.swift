// The one place that names the C library: everything Glibc- or Darwin-specific that the package
// needs goes through these functions, so that the rest compiles on Linux and Apple platforms
// alike (POSIX calls themselves come through Foundation and swift-system on both).
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import SystemPackage

/// The platform's C library, for the few calls that differ between Linux and Apple platforms.
package enum Platform {
    /// Overwrites `count` bytes at `base` with zeros in a way the compiler may not remove
    /// (`explicit_bzero` on Linux, `memset_s` on Apple platforms).
    package static func secureZero(_ base: UnsafeMutableRawPointer, _ count: Int) {
        #if canImport(Glibc)
            explicit_bzero(base, count)
        #elseif canImport(Darwin)
            _ = memset_s(base, count, 0, count)
        #endif
    }

    /// Asks the kernel to leave these pages out of core files (`MADV_DONTDUMP`, Linux only).
    ///
    /// - Returns: Whether the request was accepted; `false` where the platform has no such call.
    package static func excludeFromCoreDumps(_ base: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        #if os(Linux)
            return madvise(base, count, MADV_DONTDUMP) == 0
        #else
            return false
        #endif
    }

    /// Lets the pages be dumped again before they are returned to the allocator.
    package static func includeInCoreDumps(_ base: UnsafeMutableRawPointer, _ count: Int) {
        #if os(Linux)
            _ = madvise(base, count, MADV_DODUMP)
        #endif
    }

    /// Tries to take a write lock on one byte of the file open at `descriptor`, without waiting:
    /// an open-file-description lock on Linux (`F_OFD_SETLK`: held by the descriptor, like
    /// `flock`, so two tasks of one process exclude each other), a process lock elsewhere
    /// (`F_SETLK`). It is released when the descriptor is closed.
    ///
    /// - Returns: Whether the lock was taken; `false` when another holder has it.
    /// - Throws: The `Errno` of any other failure.
    package static func tryLockByte(_ descriptor: FileDescriptor, at offset: Int64) throws -> Bool {
        var lock = flock()
        lock.l_type = Int16(F_WRLCK)
        lock.l_whence = Int16(SEEK_SET)
        lock.l_start = off_t(offset)
        lock.l_len = 1
        #if os(Linux)
            // F_OFD_SETLK (fcntl.h, Linux 3.15), which the Glibc module does not export.
            let command: Int32 = 37
        #else
            let command = F_SETLK
        #endif
        guard fcntl(descriptor.rawValue, command, &lock) == 0 else {
            let error = Errno(rawValue: errno)
            if error == .wouldBlock || error == .resourceTemporarilyUnavailable || error == .permissionDenied {
                return false
            }
            throw error
        }
        return true
    }

    /// Sets the process's core file size limit to zero, soft and hard (`setrlimit`).
    ///
    /// - Returns: Whether the kernel accepted it.
    package static func disableCoreDumps() -> Bool {
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        #if canImport(Glibc)
            return setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit) == 0
        #else
            return setrlimit(RLIMIT_CORE, &limit) == 0
        #endif
    }

    /// The process's file size limit (`RLIMIT_FSIZE`, `ulimit -f`) in bytes; `nil` when there
    /// is none.
    package static var fileSizeLimit: UInt64? {
        var limit = rlimit()
        #if canImport(Glibc)
            let code = getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit)
        #else
            let code = getrlimit(RLIMIT_FSIZE, &limit)
        #endif
        guard code == 0, limit.rlim_cur != rlim_t.max else { return nil }
        return UInt64(limit.rlim_cur)
    }

    /// A file's modification and status-change times, to the nanosecond.
    package static func modificationAndChangeTimes(_ status: Stat) -> [Int] {
        let raw = status.rawValue
        #if canImport(Glibc)
            return [raw.st_mtim.tv_sec, raw.st_mtim.tv_nsec, raw.st_ctim.tv_sec, raw.st_ctim.tv_nsec].map { Int($0) }
        #elseif canImport(Darwin)
            return [
                raw.st_mtimespec.tv_sec, raw.st_mtimespec.tv_nsec, raw.st_ctimespec.tv_sec, raw.st_ctimespec.tv_nsec,
            ].map { Int($0) }
        #endif
    }

    /// The calling thread's `errno`.
    package static var errno: Int32 {
        #if canImport(Glibc)
            Glibc.errno
        #elseif canImport(Darwin)
            Darwin.errno
        #endif
    }
}
