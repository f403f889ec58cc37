#if canImport(Glibc)
    import Glibc
#endif

/// Searches a process's memory (`/proc/PID/smaps` + `/proc/PID/mem`) for byte patterns that this
/// program holds only masked, so that a search of its own memory cannot find its own copy, and
/// tells where each match lies.
enum MemoryScanner {
    /// A pattern XORed with ``mask``; never stored in clear.
    struct MaskedPattern {
        let name: String
        let bytes: [UInt8]
    }

    /// Where a match lies.
    enum Place: String, CaseIterable, Comparable {
        /// Locked and excluded from core dumps (`VmFlags` `lo` and `dd`): DBKey's
        /// `SecureBuffer`s.
        case locked
        /// In the engine arena: memory SQLite or OpenSSL's libcrypto allocated (SQLCipher's
        /// codec, OpenSSL's key schedules).
        case engine
        /// Anywhere else: a copy the program's own code made.
        case elsewhere

        static func < (lhs: Place, rhs: Place) -> Bool {
            allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
        }
    }

    /// Matches per pattern name, per place.
    typealias Counts = [String: [Place: Int]]

    static let mask: UInt8 = 0xA5
    /// The mapping `Scripts/enginearena/enginearena.c` serves every SQLite and libcrypto
    /// allocation from (its `ARENA_ADDRESS` and `ARENA_SIZE`).
    static let engineArena: Range<UInt> = 0x5e00_0000_0000..<(0x5e00_0000_0000 + (16 << 30))
    private static let chunkSize = 1 << 20

    /// A copy of every writable mapping of a process, in mappings of this program's own that are
    /// kept out of core dumps and wiped when it is released. Read-only mappings (code and data
    /// of files) are left out: a key is never written there.
    final class Snapshot {
        private var regions: [(bytes: UnsafeMutableRawBufferPointer, place: Place)] = []

        /// Copies `process`'s memory; its own (`getpid()`) as well, since the copies are made
        /// into mappings created after the list of mappings was read.
        init(of process: pid_t) {
            let memory = open("/proc/\(process)/mem", O_RDONLY)
            guard memory >= 0 else { return }
            defer { close(memory) }
            for region in MemoryScanner.writableRegions(of: process) {
                let size = Int(region.range.upperBound - region.range.lowerBound)
                guard let copy = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                    copy != MAP_FAILED
                else { continue }
                madvise(copy, size, MADV_DONTDUMP)
                var done = 0
                while done < size {
                    let read = pread(
                        memory, copy + done, min(chunkSize, size - done),
                        off_t(Int64(bitPattern: UInt64(region.range.lowerBound) + UInt64(done))))
                    guard read > 0 else { break }
                    done += read
                }
                regions.append((UnsafeMutableRawBufferPointer(start: copy, count: done), region.place))
                if done < size { munmap(copy + done, size - done) }
            }
        }

        deinit {
            for region in regions where region.bytes.count > 0 {
                explicit_bzero(region.bytes.baseAddress!, region.bytes.count)
                munmap(region.bytes.baseAddress!, region.bytes.count)
            }
        }

        /// How many times each pattern occurs, by place.
        func count(_ patterns: [MaskedPattern]) -> Counts {
            var counts = Counts(uniqueKeysWithValues: patterns.map { ($0.name, [:]) })
            for region in regions {
                for pattern in patterns {
                    let found = MemoryScanner.occurrences(of: pattern.bytes, in: UnsafeRawBufferPointer(region.bytes))
                    if found > 0 {
                        counts[pattern.name, default: [:]][region.place, default: 0] += found
                    }
                }
            }
            return counts
        }
    }

    /// Matches of a masked pattern in `buffer`; candidates are found with `memchr` (the first
    /// byte, unmasked alone) and checked byte by byte, masked.
    private static func occurrences(of masked: [UInt8], in buffer: UnsafeRawBufferPointer) -> Int {
        guard buffer.count >= masked.count, let first = masked.first, let base = buffer.baseAddress else { return 0 }
        var found = 0
        var index = 0
        let last = buffer.count - masked.count
        while index <= last,
            let candidate = memchr(base + index, Int32(first ^ mask), last - index + 1)
        {
            index = base.distance(to: candidate)
            var matches = true
            for offset in 1..<masked.count where buffer[index + offset] ^ mask != masked[offset] {
                matches = false
                break
            }
            index += matches ? masked.count : 1
            found += matches ? 1 : 0
        }
        return found
    }

    /// The readable and writable mappings, each with its place, from `/proc/PID/smaps` (whose
    /// `VmFlags` line follows each mapping's line).
    private static func writableRegions(of process: pid_t) -> [(range: Range<UInt>, place: Place)] {
        guard let file = fopen("/proc/\(process)/smaps", "r") else { return [] }
        defer { fclose(file) }
        var regions: [(range: Range<UInt>, place: Place)] = []
        var current: Range<UInt>?
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(whereSeparator: \.isWhitespace)
            if fields.first == "VmFlags:" {
                if let range = current {
                    let flags = Set(fields.dropFirst())
                    let place: Place =
                        engineArena.contains(range.lowerBound)
                        ? .engine : (flags.contains("lo") && flags.contains("dd") ? .locked : .elsewhere)
                    regions.append((range, place))
                }
                current = nil
                continue
            }
            let bounds = fields.first?.split(separator: "-") ?? []
            guard fields.count >= 2, bounds.count == 2, let start = UInt(bounds[0], radix: 16),
                let end = UInt(bounds[1], radix: 16)
            else { continue }
            current = fields[1].hasPrefix("rw") ? start..<end : nil
        }
        return regions
    }
}
