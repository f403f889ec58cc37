import Foundation

/// Threads owned by the package for blocking C work, so that no `fsync`, rekey, export,
/// integrity check or PKCS#11 call ever holds a thread of Swift's cooperative pool (which has
/// one thread per core: two blocked calls would stall every task of the app).
///
/// Work goes to one of two lanes, each a set of threads that grows on demand and shrinks when
/// idle, so short calls never queue behind long ones:
/// - ``Lane/long``: work that scales with the database (rekey, export, `integrity_check`) and
///   calls into devices (PKCS#11), up to 8 at once;
/// - ``Lane/short``: work that is short but may block (an `fsync`ed `.key` write, an open that
///   rolls back a hot journal), up to 64 at once — in practice a thread per open connection.
package final class BlockingExecutor: Sendable {
    /// Which threads run a piece of work.
    package enum Lane: Sendable {
        case long, short
    }

    /// The executor every manager and provider in the process shares.
    package static let shared = BlockingExecutor()

    private let long = ThreadLane(name: "dbkey.long", maximumThreads: 8)
    private let short = ThreadLane(name: "dbkey.short", maximumThreads: 64)

    /// Runs `work` on one of the lane's threads and waits for it without blocking the caller's
    /// thread.
    package func run<Result: Sendable>(
        _ lane: Lane,
        _ work: @escaping @Sendable () throws -> Result
    ) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            (lane == .long ? long : short).submit {
                continuation.resume(with: Swift.Result { try work() })
            }
        }
    }

    /// The threads a lane has now, busy or idle, for tests.
    package func threadCount(_ lane: Lane) -> Int {
        (lane == .long ? long : short).threadCount
    }
}

/// Worker threads that start when there is more work than idle threads and end after ten idle
/// seconds. One thread at a time looks for the next job for a moment (200 yields) before it
/// sleeps: a pool's reads come in runs, and a sleeping thread takes tens of microseconds to
/// wake — as long as a UI read itself.
private final class ThreadLane: @unchecked Sendable {
    // Every var below is guarded by `condition`.
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var threads = 0
    private var idle = 0
    /// Whether a thread is looking for work before it sleeps.
    private var spinning = false
    private let name: String
    private let maximumThreads: Int

    init(name: String, maximumThreads: Int) {
        self.name = name
        self.maximumThreads = maximumThreads
    }

    var threadCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return threads
    }

    func submit(_ job: @escaping () -> Void) {
        condition.lock()
        jobs.append(job)
        // A woken thread may not have taken its job yet, so count jobs against idle threads.
        if jobs.count > idle && threads < maximumThreads {
            threads += 1
            let thread = Thread { [self] in work() }
            thread.name = name
            thread.start()
        }
        condition.signal()
        condition.unlock()
    }

    private func work() {
        condition.lock()
        while true {
            // Work tends to come in runs (a pool's reads): one thread at a time looks again for
            // a moment before sleeping, so that the next job does not wait for a thread to be
            // woken, and idle threads never crowd the cores.
            if jobs.isEmpty && !spinning {
                spinning = true
                var spins = 0
                while jobs.isEmpty && spins < 200 {
                    condition.unlock()
                    sched_yield()
                    spins += 1
                    condition.lock()
                }
                spinning = false
            }
            while jobs.isEmpty {
                idle += 1
                let woken = condition.wait(until: Date(timeIntervalSinceNow: 10))
                idle -= 1
                if !woken && jobs.isEmpty {
                    threads -= 1
                    condition.unlock()
                    return
                }
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
            condition.lock()
        }
    }
}
