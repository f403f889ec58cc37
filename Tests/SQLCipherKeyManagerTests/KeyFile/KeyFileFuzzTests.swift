import Foundation
import Testing

@testable import SQLCipherKeyManager

/// Property-based fuzzing of the `.key` parser and of opening with what it accepts.
///
/// `Scripts/fuzz-keyfile SECONDS` runs this for a set time (`DBKEY_FUZZ_SECONDS`); the suite
/// runs a fixed number of inputs. `DBKEY_FUZZ_SEED` replays a run.
@Suite("Fuzzing the .key parser", .tags(.core))
struct KeyFileFuzzTests {
    /// SplitMix64: small, fast, reproducible from its seed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let environment = ProcessInfo.processInfo.environment

    /// One mutation of a valid file's bytes.
    static func mutate(_ original: [UInt8], _ random: inout Generator) -> [UInt8] {
        var bytes = original
        let interesting: [[UInt8]] = [
            Array("null".utf8), Array("true".utf8), Array("-1".utf8), Array("1e308".utf8), Array("\"\"".utf8),
            Array("{}".utf8),
            Array("[]".utf8), Array("\"\\u0000\"".utf8), Array("9223372036854775808".utf8), Array("\"A\"".utf8),
            [0xFF, 0xFE],
        ]
        for _ in 0..<Int.random(in: 1...4, using: &random) where !bytes.isEmpty {
            let position = Int.random(in: 0..<bytes.count, using: &random)
            switch Int.random(in: 0..<9, using: &random) {
            case 0: bytes[position] ^= UInt8(1 << Int.random(in: 0..<8, using: &random))
            case 1: bytes[position] = UInt8.random(in: 0...255, using: &random)
            case 2: bytes.remove(at: position)
            case 3: bytes.insert(UInt8.random(in: 0x20...0x7E, using: &random), at: position)
            case 4: bytes.removeLast(Int.random(in: 0..<bytes.count, using: &random))
            case 5: bytes.insert(contentsOf: interesting.randomElement(using: &random)!, at: position)
            case 6:
                // A duplicate of a member: the first line that names one, again after the '{'.
                if let open = bytes.firstIndex(of: UInt8(ascii: "{")),
                    let quote = bytes[position...].firstIndex(of: UInt8(ascii: "\"")),
                    let end = bytes[quote...].firstIndex(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\n") }
                    ),
                    bytes[quote..<end].contains(UInt8(ascii: ":"))
                {
                    bytes.insert(contentsOf: Array(bytes[quote..<end]) + [UInt8(ascii: ",")], at: open + 1)
                }
            case 7:
                // Deep nesting at a value.
                let depth = Int.random(in: 2...600, using: &random)
                bytes.insert(
                    contentsOf: Array(repeating: UInt8(ascii: "["), count: depth)
                        + Array(repeating: UInt8(ascii: "]"), count: depth), at: position)
            default:
                // Replace the value after a random ':' with something of another type.
                if let colon = bytes[position...].firstIndex(of: UInt8(ascii: ":")),
                    let end = bytes[colon...].firstIndex(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\n") })
                {
                    bytes.replaceSubrange((colon + 1)..<end, with: interesting.randomElement(using: &random)!)
                }
            }
        }
        return bytes
    }

    @Test("mutated .key files never crash, never open with a wrong key, and reading never changes them")
    func fuzz() async throws {
        let seconds = Double(Self.environment["DBKEY_FUZZ_SECONDS"] ?? "") ?? 0
        let seed = UInt64(Self.environment["DBKEY_FUZZ_SEED"] ?? "") ?? UInt64.random(in: 0...UInt64.max)
        var random = Generator(state: seed)
        let database = try await TestDatabase(rows: 3, context: ["purpose": "fuzz"])
        let keyPath = database.path + ".key"
        let original = Array(try contents(keyPath))
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(seconds)
        var inputs = 0
        var parsed = 0
        var opened = 0
        var errors: [String: Int] = [:]
        while inputs < 1500 || clock.now < deadline {
            inputs += 1
            let bytes = Self.mutate(original, &random)
            try bytes.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: keyPath) }
            let keyFile: KeyFile
            do {
                keyFile = try KeyFile.read(from: keyPath)
                parsed += 1
            } catch let error as DBKeyError {
                errors[error.code.rawValue, default: 0] += 1
                #expect(
                    Array(try contents(keyPath)) == bytes, "reading changed the file (seed \(seed), input \(inputs))")
                continue
            }
            #expect(Array(try contents(keyPath)) == bytes, "reading changed the file (seed \(seed), input \(inputs))")
            let manager = DatabaseKeyManager(
                databasePath: database.path, kms: database.kms, configuration: .init(keyCacheTTL: .zero),
                logger: silentLogger)
            do {
                let db = try await manager.open()
                // SQLCipher proved the key; the rows prove it is this database's.
                #expect(try db.fetchAll("SELECT count(*) FROM item").first?[0] == .integer(3))
                db.close()
                opened += 1
                if keyFile.pending == nil {
                    #expect(
                        Array(try contents(keyPath)) == bytes,
                        "opening changed a file with nothing pending (seed \(seed))")
                }
            } catch let error as DBKeyError {
                errors[error.code.rawValue, default: 0] += 1
                #expect(
                    Array(try contents(keyPath)) == bytes,
                    "a failed open changed the file (seed \(seed), input \(inputs))")
            }
        }
        try original.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: keyPath) }
        try await database.expectIntact()
        print(
            "fuzz (seed \(seed)): \(inputs) inputs, \(parsed) parsed, \(opened) opened the database; refusals \(errors.sorted { $0.key < $1.key })"
        )
        #expect(parsed > 0 && errors.values.reduce(0, +) > 0, "the mutations should produce both kinds")
    }
}
