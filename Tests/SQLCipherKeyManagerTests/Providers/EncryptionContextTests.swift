import Testing

@testable import SQLCipherKeyManager

@Suite("EncryptionContext", .tags(.core))
struct EncryptionContextTests {
    @Test("the canonical encoding is length-prefixed pairs in key byte order")
    func canonicalEncoding() {
        let context: EncryptionContext = ["b": "2", "a": "xy"]
        let expected: [UInt8] =
            [0, 0, 0, 1, 0x61] + [0, 0, 0, 2, 0x78, 0x79]  // "a" = "xy"
            + [0, 0, 0, 1, 0x62] + [0, 0, 0, 1, 0x32]  // "b" = "2"
        #expect(context.canonicalEncoding == expected)
        #expect(EncryptionContext.empty.canonicalEncoding == [])
    }

    @Test("keys sort by UTF-8 bytes, not by locale: uppercase before lowercase, é after z")
    func ordering() {
        let context: EncryptionContext = ["z": "", "é": "", "Z": "", "a": ""]
        #expect(context.pairs.map(\.key) == ["Z", "a", "z", "é"])
    }

    @Test("contexts that would collide in a naive concatenation encode differently")
    func injective() {
        let first: EncryptionContext = ["ab": "c"]
        let second: EncryptionContext = ["a": "bc"]
        #expect(first.canonicalEncoding != second.canonicalEncoding)
    }

    @Test("KEY=VALUE parsing keeps '=' in values and rejects empty keys and repeats")
    func parsing() async throws {
        let context = try EncryptionContext(parsing: ["purpose=medical-db", "expr=a=b", "empty="])
        #expect(context.dictionary == ["purpose": "medical-db", "expr": "a=b", "empty": ""])
        #expect(throws: DBKeyError.self) { try EncryptionContext(parsing: ["=x"]) }
        #expect(throws: DBKeyError.self) { try EncryptionContext(parsing: ["novalue"]) }
        #expect(throws: DBKeyError.self) { try EncryptionContext(parsing: ["a=1", "a=2"]) }
    }
}
