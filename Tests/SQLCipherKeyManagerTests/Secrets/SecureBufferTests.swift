import Foundation
import Testing

@testable import SQLCipherKeyManager

@Suite("SecureBuffer", .tags(.core))
struct SecureBufferTests {
    @Test("description and debugDescription never show the bytes")
    func redactedDescription() {
        let buffer = secureBuffer(hex: "41424344")  // "ABCD"
        #expect(buffer.description == "SecureBuffer(4 bytes, redacted)")
        #expect(!String(reflecting: buffer).contains("ABCD"))
        #expect(!"\(buffer)".contains("41424344"))
    }

    @Test("equality compares contents and lengths")
    func equality() {
        #expect(secureBuffer(hex: "00112233") == secureBuffer(hex: "00112233"))
        #expect(secureBuffer(hex: "00112233") != secureBuffer(hex: "00112234"))
        #expect(secureBuffer(hex: "0011") != secureBuffer(hex: "001122"))
    }

    @Test(
        "small buffers share pages locked once: each locked, undumpable, zero-filled even when its slot held a secret, and never overlapping a live one"
    )
    func pooledSlots() throws {
        var live: [SecureBuffer] = []
        for count in [0, 1, 32, 64, 65, 100, 500, 2048, 4096] {
            let buffer = try SecureBuffer.random(count: count)
            #expect(buffer.isMemoryLocked && buffer.isExcludedFromCoreDumps, "\(count) bytes")
            live.append(buffer)
        }
        let ranges = live.map { buffer in
            buffer.withUnsafeBytes {
                UInt(bitPattern: $0.baseAddress)..<(UInt(bitPattern: $0.baseAddress) + UInt(max(1, $0.count)))
            }
        }
        for (index, range) in ranges.enumerated() {
            #expect(!ranges[(index + 1)...].contains { $0.overlaps(range) }, "live buffers never share bytes")
        }
        // A slot given back is wiped: the next buffer of its size starts as zeros.
        var address: UInt?
        do {
            let secret = SecureBuffer(count: 48) { $0.initializeMemory(as: UInt8.self, repeating: 0xA5) }
            address = secret.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        }
        var reused = false
        for _ in 0..<64 {
            let next = SecureBuffer(count: 48) { bytes in
                #expect(bytes.allSatisfy { $0 == 0 }, "a new buffer starts as zeros")
            }
            reused = reused || next.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) } == address
        }
        #expect(reused, "the released slot is used again")
    }

    @Test("random buffers have the requested size and differ")
    func random() async throws {
        let first = try SecureBuffer.random(count: 300)
        let second = try SecureBuffer.random(count: 300)
        #expect(first.count == 300)
        #expect(first != second)
    }

    @Test("the pages are locked in memory and excluded from core dumps, as the kernel reports")
    func lockedAndNotDumped() async throws {
        let buffer = try SecureBuffer.random(count: 32)
        #expect(buffer.isMemoryLocked)
        #expect(buffer.isExcludedFromCoreDumps)
        let address = buffer.withUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
        // /proc/self/smaps lists each mapping's VmFlags: "lo" = locked, "dd" = do not dump.
        // /proc files report size 0, so read to the end instead of trusting stat.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        let smaps = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        var inMapping = false
        var flags: [Substring]?
        for line in smaps.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
                let start = UInt(line[..<dash], radix: 16),
                let end = UInt(line[line.index(after: dash)..<space], radix: 16)
            {
                inMapping = (start..<end).contains(address)
            } else if inMapping, line.hasPrefix("VmFlags:") {
                flags = line.dropFirst("VmFlags:".count).split(separator: " ")
                break
            }
        }
        let vmFlags = try #require(flags, "no mapping in /proc/self/smaps holds the buffer")
        #expect(vmFlags.contains("lo"))
        #expect(vmFlags.contains("dd"))
    }

    @Test("base64 decoding into secure memory agrees with Foundation and rejects non-canonical text")
    func base64() async throws {
        for length in 0..<70 {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255) }
            let text = Data(bytes).base64EncodedString()
            let decoded = try #require(Array(text.utf8).withUnsafeBytes { SecureBuffer.decodingBase64($0) })
            #expect(decoded.withUnsafeBytes { Array($0) } == bytes)
            #expect(Base64.encode(bytes) == text)
            #expect(decoded.base64Encoded().withUnsafeBytes { Array($0) } == Array(text.utf8))
        }
        for invalid in ["A", "AAA", "AA=A", "A===", "AB==", "AAB=", "A B=", "////\n"] {
            #expect(Array(invalid.utf8).withUnsafeBytes { SecureBuffer.decodingBase64($0) } == nil, "\(invalid)")
        }
    }
}
