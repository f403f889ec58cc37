import Foundation

/// Runs blocking C work (a rekey, an export) on a thread of its own, so that a long key change
/// never holds one of the few threads of Swift's cooperative pool.
func onDedicatedThread<Result: Sendable>(_ work: @escaping @Sendable () throws -> Result) async throws -> Result {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Swift.Result { try work() })
        }
        thread.name = "dbkey.key-change"
        thread.start()
    }
}
