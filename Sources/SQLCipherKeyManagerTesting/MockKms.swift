import Crypto
import SQLCipherKeyManager
import Synchronization

/// A key management service for tests: real AES-GCM wrapping, deterministic keys on request, a
/// log of every call, and injected faults and latency.
///
/// Use it to test how your app behaves when the KMS is slow or down, without a network:
///
/// ```swift
/// let kms = MockKms(seed: 42)
/// let manager = DatabaseKeyManager(databasePath: path, kms: kms, configuration: .init(kekId: "test"), logger: logger)
/// try await manager.initialize()
///
/// kms.failNext(1, [.decrypt], with: DBKeyError(.kmsUnavailable, "injected outage"))
/// await #expect(throws: DBKeyError.self) { try await manager.open() }
/// #expect(kms.calls(of: .decrypt).count == 1)
/// ```
///
/// With a seed, the n-th generated data key is ``dataKey(seed:index:)`` and every KEK is derived
/// from the seed, so two mocks with the same seed unwrap each other's keys. Without one, keys
/// are random. Wrapping enforces the encryption context as a real KMS does.
public final class MockKms: KeyManagementService {
    /// An operation of the ``KeyManagementService`` protocol.
    public enum Operation: String, Sendable, CaseIterable {
        case generateDataKey, decrypt, encrypt, health
    }

    /// A call the mock received, in order, including calls that failed by injection.
    public struct Call: Sendable, Hashable {
        /// Which operation.
        public let operation: Operation
        /// The KEK id the caller passed.
        public let kekId: String
        /// The encryption context the caller passed (empty for `health`).
        public let context: EncryptionContext
    }

    public let providerName: String

    private struct Fault {
        var operations: Set<Operation>
        var remaining: Int
        var error: DBKeyError
    }

    private struct State {
        var calls: [Call] = []
        var faults: [Fault] = []
        var latency: Duration = .zero
        var generatedCount: UInt64 = 0
    }

    private let state = Mutex(State())
    private let seed: UInt64?
    private let rootSecret: SecureBuffer
    private static let wrapping = AESGCMKeyWrap(label: "dbkey-mock-v1")

    /// Creates a mock.
    ///
    /// - Parameters:
    ///   - seed: Makes every key deterministic; `nil` for random keys.
    ///   - providerName: The name recorded in `.key` files (`mock` by default).
    public init(seed: UInt64? = nil, providerName: String = "mock") {
        self.seed = seed
        self.providerName = providerName
        if let seed {
            self.rootSecret = MockKms.derive(seed: seed, label: "root", index: 0)
        } else {
            // The kernel's entropy source does not fail on Linux; a test with no randomness
            // could not run anyway.
            self.rootSecret = try! SecureBuffer.random(count: 32)
        }
    }

    /// The data key a mock created with `seed` returns from its `index`-th (from 0)
    /// ``generateDataKey(kekId:context:)`` call.
    public static func dataKey(seed: UInt64, index: UInt64) -> SecureBuffer {
        derive(seed: seed, label: "dek", index: index)
    }

    // MARK: - Fault injection

    /// Makes the next `count` calls of the given operations fail with `error`.
    ///
    /// Faults queue up: a second call adds to the first.
    public func failNext(
        _ count: Int = 1,
        _ operations: Set<Operation> = Set(Operation.allCases),
        with error: DBKeyError = DBKeyError(.kmsUnavailable, "MockKms: injected outage.")
    ) {
        state.withLock { $0.faults.append(Fault(operations: operations, remaining: count, error: error)) }
    }

    /// Makes every call wait `latency` before answering.
    public func setLatency(_ latency: Duration) {
        state.withLock { $0.latency = latency }
    }

    /// Every call received so far.
    public var calls: [Call] { state.withLock { $0.calls } }

    /// The calls of one operation received so far.
    public func calls(of operation: Operation) -> [Call] {
        calls.filter { $0.operation == operation }
    }

    /// Forgets the calls received so far (faults and latency stay).
    public func resetCalls() {
        state.withLock { $0.calls.removeAll() }
    }

    // MARK: - KeyManagementService

    public func generateDataKey(kekId: String, context: EncryptionContext) async throws -> DataKey {
        let index = try await begin(.generateDataKey, kekId: kekId, context: context) { state in
            defer { state.generatedCount += 1 }
            return state.generatedCount
        }
        let key = try seed.map { MockKms.dataKey(seed: $0, index: index) } ?? SecureBuffer.random(count: 32)
        let resolved = resolve(kekId)
        let wrapped = try MockKms.wrapping.wrap(key, under: kek(resolved), context: context)
        return DataKey(plaintext: key, wrapped: wrapped, kekId: resolved)
    }

    public func decrypt(_ wrapped: WrappedDataKey, kekId: String, context: EncryptionContext) async throws
        -> SecureBuffer
    {
        _ = try await begin(.decrypt, kekId: kekId, context: context) { _ in () }
        return try MockKms.wrapping.unwrap(wrapped, under: kek(resolve(kekId)), context: context)
    }

    public func encrypt(_ key: SecureBuffer, kekId: String, context: EncryptionContext) async throws -> WrappedDataKey {
        _ = try await begin(.encrypt, kekId: kekId, context: context) { _ in () }
        return try MockKms.wrapping.wrap(key, under: kek(resolve(kekId)), context: context)
    }

    public func health(kekId: String) async throws -> KmsHealth {
        let clock = ContinuousClock()
        let start = clock.now
        _ = try await begin(.health, kekId: kekId, context: .empty) { _ in () }
        return KmsHealth(kekId: resolve(kekId), keyState: "Enabled", latency: clock.now - start)
    }

    // MARK: - Internals

    /// Logs the call, applies latency and the first matching fault, then runs `body` on the state.
    private func begin<Result: Sendable>(
        _ operation: Operation,
        kekId: String,
        context: EncryptionContext,
        _ body: @Sendable (inout State) -> Result
    ) async throws -> Result {
        let (latency, fault) = state.withLock { state -> (Duration, DBKeyError?) in
            state.calls.append(Call(operation: operation, kekId: kekId, context: context))
            guard let index = state.faults.firstIndex(where: { $0.operations.contains(operation) && $0.remaining > 0 })
            else {
                return (state.latency, nil)
            }
            state.faults[index].remaining -= 1
            let error = state.faults[index].error
            if state.faults[index].remaining == 0 {
                state.faults.remove(at: index)
            }
            return (state.latency, error)
        }
        if latency > .zero {
            try await Task.sleep(for: latency)
        }
        if let fault {
            throw fault
        }
        return state.withLock { body(&$0) }
    }

    private func resolve(_ kekId: String) -> String {
        kekId.hasPrefix("mock:") ? kekId : "mock:" + kekId
    }

    private func kek(_ resolvedKekId: String) -> SecureBuffer {
        rootSecret.withUnsafeBytes { root in
            let mac = HMAC<SHA256>.authenticationCode(
                for: Array("kek\0\(resolvedKekId)".utf8), using: SymmetricKey(data: root))
            return mac.withUnsafeBytes { SecureBuffer(copying: $0) }
        }
    }

    private static func derive(seed: UInt64, label: String, index: UInt64) -> SecureBuffer {
        let seedKey = withUnsafeBytes(of: seed.bigEndian) { SymmetricKey(data: $0) }
        var message = Array("dbkey-mock\0\(label)\0".utf8)
        withUnsafeBytes(of: index.bigEndian) { message.append(contentsOf: $0) }
        let mac = HMAC<SHA256>.authenticationCode(for: message, using: seedKey)
        return mac.withUnsafeBytes { SecureBuffer(copying: $0) }
    }
}
