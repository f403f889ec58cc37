import Foundation

/// How large the heavy tests are. By default each is as large as proves its class of check;
/// `DBKEY_TEST_SOAK=1` gives the large counts and sizes of a nightly or pre-release run.
enum TestScale {
    /// Whether this run soaks: `DBKEY_TEST_SOAK=1`.
    static let soak = ProcessInfo.processInfo.environment["DBKEY_TEST_SOAK"] == "1"

    /// `proving` in a normal run, `soaking` in a soak.
    static func choose<Value>(_ proving: Value, soak soaking: Value) -> Value {
        soak ? soaking : proving
    }
}
