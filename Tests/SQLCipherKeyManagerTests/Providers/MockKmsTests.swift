import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Testing

@Suite("MockKms", .tags(.core))
struct MockKmsTests {
    @Test("seeded mocks generate the documented keys, and unwrap each other's")
    func deterministic() async throws {
        let first = MockKms(seed: 42)
        let second = MockKms(seed: 42)
        let a0 = try await first.generateDataKey(kekId: "k", context: .empty)
        let a1 = try await first.generateDataKey(kekId: "k", context: .empty)
        #expect(a0.plaintext == MockKms.dataKey(seed: 42, index: 0))
        #expect(a1.plaintext == MockKms.dataKey(seed: 42, index: 1))
        #expect(a0.plaintext != a1.plaintext)
        #expect(MockKms.dataKey(seed: 43, index: 0) != a0.plaintext)
        #expect(try await second.decrypt(a1.wrapped, kekId: a1.kekId, context: .empty) == a1.plaintext)
        // Another seed means other KEKs.
        await expectError(.ciphertextInvalid) {
            _ = try await MockKms(seed: 43).decrypt(a1.wrapped, kekId: a1.kekId, context: .empty)
        }
    }

    @Test("KEKs with different ids do not unwrap each other's keys")
    func separateKeks() async throws {
        let kms = MockKms(seed: 1)
        let dataKey = try await kms.generateDataKey(kekId: "one", context: .empty)
        #expect(dataKey.kekId == "mock:one")
        await expectError(.ciphertextInvalid) {
            _ = try await kms.decrypt(dataKey.wrapped, kekId: "two", context: .empty)
        }
    }

    @Test("injected faults fail exactly the next N matching calls, with the chosen error")
    func faults() async throws {
        let kms = MockKms(seed: 1)
        let dataKey = try await kms.generateDataKey(kekId: "k", context: .empty)
        kms.failNext(2, [.decrypt], with: DBKeyError(.kmsAccessDenied, "denied"))
        // Other operations are not affected.
        _ = try await kms.health(kekId: "k")
        for _ in 0..<2 {
            await expectError(.kmsAccessDenied) {
                _ = try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: .empty)
            }
        }
        #expect(try await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: .empty) == dataKey.plaintext)
    }

    @Test("every call is logged in order, failed ones included")
    func callLog() async throws {
        let kms = MockKms()
        let dataKey = try await kms.generateDataKey(kekId: "k", context: ["a": "1"])
        kms.failNext()
        _ = try? await kms.decrypt(dataKey.wrapped, kekId: dataKey.kekId, context: ["a": "1"])
        _ = try await kms.encrypt(dataKey.plaintext, kekId: "k", context: .empty)
        #expect(kms.calls.map(\.operation) == [.generateDataKey, .decrypt, .encrypt])
        #expect(kms.calls(of: .decrypt).first?.context == ["a": "1"])
        #expect(kms.calls(of: .decrypt).first?.kekId == "mock:k")
        kms.resetCalls()
        #expect(kms.calls.isEmpty)
    }

    @Test("latency delays every answer")
    func latency() async throws {
        let kms = MockKms()
        kms.setLatency(.milliseconds(50))
        let clock = ContinuousClock()
        let elapsed = try await clock.measure { _ = try await kms.health(kekId: "k") }
        #expect(elapsed >= .milliseconds(50))
    }
}
