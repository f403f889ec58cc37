import Foundation

/// The `Retry-After` header of a throttling answer (RFC 9110, 10.2.3).
package enum RetryAfter {
    /// The wait a `Retry-After` value asks for: a number of seconds, or an HTTP date (a date in
    /// the past asks for none); `nil` when the header is absent or is neither.
    package static func parse(_ value: String?, now: Date = Date()) -> Duration? {
        guard let value = value?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
        if value.utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) {
            // Digits only: seconds. A number too long for an Int is still a wait longer than any
            // deadline.
            return .seconds(min(Int(value) ?? .max, Int(Int32.max)))
        }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        guard let date = formatter.date(from: value) else { return nil }
        return .milliseconds(Int64(max(0, date.timeIntervalSince(now)) * 1000))
    }
}
