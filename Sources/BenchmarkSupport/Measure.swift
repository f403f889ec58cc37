import Foundation

/// Timing helpers: alternating A/B runs, medians, and the table the benchmark prints.
public enum Measure {
    /// Runs `a` and `b` alternately `repetitions` times and returns their median durations.
    public static func alternating(
        _ repetitions: Int,
        _ a: () async throws -> Void,
        _ b: () async throws -> Void
    ) async rethrows -> (a: Duration, b: Duration) {
        var first: [Duration] = []
        var second: [Duration] = []
        for _ in 0..<repetitions {
            first.append(try await time(a))
            second.append(try await time(b))
        }
        return (median(first), median(second))
    }

    public static func time(_ body: () async throws -> Void) async rethrows -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        try await body()
        return clock.now - start
    }

    public static func median(_ values: [Duration]) -> Duration {
        let sorted = values.sorted()
        return sorted[sorted.count / 2]
    }

    public static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    public static func microseconds(_ duration: Duration) -> String {
        String(format: "%.1f µs", seconds(duration) * 1e6)
    }

    public static func milliseconds(_ duration: Duration) -> String {
        String(format: "%.2f ms", seconds(duration) * 1e3)
    }
}

/// One line of the result table.
public struct BenchmarkRow {
    public let measurement: String
    public let ours: String
    public let baseline: String
    public let ratio: String
    public let target: String
    public let met: Bool?

    public init(measurement: String, ours: String, baseline: String, ratio: String, target: String, met: Bool?) {
        self.measurement = measurement
        self.ours = ours
        self.baseline = baseline
        self.ratio = ratio
        self.target = target
        self.met = met
    }

    public static func print(_ rows: [BenchmarkRow]) {
        let header = ["measurement", "DBKey", "baseline", "ratio", "target", "met"]
        let cells = rows.map {
            [$0.measurement, $0.ours, $0.baseline, $0.ratio, $0.target, $0.met.map { $0 ? "yes" : "MISSED" } ?? "—"]
        }
        Swift.print("| " + header.joined(separator: " | ") + " |")
        Swift.print("|" + header.map { _ in "---" }.joined(separator: "|") + "|")
        for row in cells {
            Swift.print("| " + row.joined(separator: " | ") + " |")
        }
    }
}

/// Runs blocking work on a thread of its own, off Swift's cooperative pool.
public func offPool<Result: Sendable>(_ work: @escaping @Sendable () throws -> Result) async throws -> Result {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Swift.Result { try work() }) }.start()
    }
}
