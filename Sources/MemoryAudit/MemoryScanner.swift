#if canImport(Glibc)
    import Glibc
#endif

/// Searches this process's readable memory (`/proc/self/maps` + `/proc/self/mem`) for byte
/// patterns that it holds only masked, so that the search cannot find its own copy.
struct MemoryScanner {
    /// A pattern XORed with ``mask``; never stored in clear.
    struct MaskedPattern {
        let name: String
        let bytes: [UInt8]
    }

    static let mask: UInt8 = 0xA5
    private static let chunkSize = 1 << 20

    /// How many times each pattern occurs in readable memory, outside the scanner's own buffer.
    static func count(_ patterns: [MaskedPattern]) -> [String: Int] {
        let longest = patterns.map(\.bytes.count).max() ?? 0
        let scratchSize = chunkSize + longest
        // A mapping of its own, skipped by address, so that copying memory in never creates a
        // match of its own.
        guard let scratch = mmap(nil, scratchSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
            scratch != MAP_FAILED
        else { return [:] }
        defer {
            explicit_bzero(scratch, scratchSize)
            munmap(scratch, scratchSize)
        }
        let scratchStart = UInt(bitPattern: scratch)
        let scratchEnd = scratchStart + UInt(scratchSize)
        var counts = Dictionary(uniqueKeysWithValues: patterns.map { ($0.name, 0) })
        let memory = open("/proc/self/mem", O_RDONLY)
        guard memory >= 0 else { return [:] }
        defer { close(memory) }
        for region in readableRegions() where region.end <= scratchStart || region.start >= scratchEnd {
            var offset = region.start
            var carried = 0
            while offset < region.end {
                let length = Int(min(UInt(chunkSize), region.end - offset))
                let read = pread(memory, scratch + carried, length, off_t(Int64(bitPattern: UInt64(offset))))
                guard read > 0 else { break }
                let buffer = UnsafeRawBufferPointer(start: scratch, count: carried + read)
                for pattern in patterns {
                    counts[pattern.name, default: 0] += occurrences(of: pattern.bytes, in: buffer, endingAfter: carried)
                }
                // Keep the tail so that a match across two chunks is found, once.
                carried = min(longest - 1, carried + read)
                memmove(scratch, scratch + (buffer.count - carried), carried)
                offset += UInt(read)
            }
        }
        return counts
    }

    /// Matches that end past `carried`: those wholly inside the carried tail were counted with
    /// the previous chunk.
    private static func occurrences(of masked: [UInt8], in buffer: UnsafeRawBufferPointer, endingAfter carried: Int)
        -> Int
    {
        guard buffer.count >= masked.count, let first = masked.first else { return 0 }
        var found = 0
        var index = max(0, carried - masked.count + 1)
        let last = buffer.count - masked.count
        while index <= last {
            if buffer[index] ^ mask == first {
                var matches = true
                for offset in 1..<masked.count where buffer[index + offset] ^ mask != masked[offset] {
                    matches = false
                    break
                }
                if matches {
                    found += 1
                    index += masked.count
                    continue
                }
            }
            index += 1
        }
        return found
    }

    private static func readableRegions() -> [(start: UInt, end: UInt)] {
        guard let file = fopen("/proc/self/maps", "r") else { return [] }
        defer { fclose(file) }
        var regions: [(start: UInt, end: UInt)] = []
        var line = [CChar](repeating: 0, count: 4096)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, fields[1].first == "r" else { continue }
            // The kernel's own pages cannot be read through /proc/self/mem.
            if text.contains("[vvar]") || text.contains("[vsyscall]") { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt(bounds[0], radix: 16), let end = UInt(bounds[1], radix: 16) else {
                continue
            }
            regions.append((start, end))
        }
        return regions
    }
}
