import Foundation
import Logging
import Synchronization
import Testing

@testable import SQLCipherKeyManager
@testable import KmsHTTP
@testable import SQLCipherKeyManagerAWS

/// The moto server `Scripts/test` starts (through `Scripts/moto`) and describes in
/// `DBKEY_TEST_AWS_*` variables. A test that needs it fails when it is missing.
enum Moto {
    static let variables = ProcessInfo.processInfo.environment

    static func value(_ name: String) throws -> String {
        try scriptVariable("DBKEY_TEST_AWS_\(name)", describing: "moto server")
    }

    static func endpoint() throws -> URL { URL(string: try value("ENDPOINT"))! }
    static func keyArn() throws -> String { try value("KEY_ARN") }
    static func secondKeyArn() throws -> String { try value("SECOND_KEY_ARN") }
    static func alias() throws -> String { try value("ALIAS") }

    static func credentials(secret: String? = nil) throws -> AWSCredentials {
        let secret = try secret ?? value("SECRET_ACCESS_KEY")
        return AWSCredentials(
            accessKeyId: try value("ACCESS_KEY_ID"),
            secretAccessKey: Array(secret.utf8).withUnsafeBytes { SecureBuffer(copying: $0) }
        )
    }

    /// A provider talking to moto, through `transport` when given (to count or fault calls).
    static func provider(
        secret: String? = nil,
        endpoint: URL? = nil,
        retry: RetryPolicy = .init(attempts: 2, timeout: .seconds(5)),
        transport: (any KmsTransport)? = nil
    ) throws -> AWSKms {
        AWSKms(
            credentials: try credentials(secret: secret),
            region: try value("REGION"),
            endpoint: try endpoint ?? self.endpoint(),
            retry: retry,
            transport: transport ?? URLSessionKmsTransport(),
            logger: silentLogger
        )
    }

    /// The environment a `dbkey` process needs to reach moto as an AWS SDK would.
    static func processEnvironment() throws -> [String: String] {
        [
            "AWS_ACCESS_KEY_ID": try value("ACCESS_KEY_ID"),
            "AWS_SECRET_ACCESS_KEY": try value("SECRET_ACCESS_KEY"),
            "AWS_REGION": try value("REGION"),
            "AWS_ENDPOINT_URL_KMS": try value("ENDPOINT"),
        ]
    }

    /// Runs Scripts/interop/aws_kms.py (boto3) with a JSON request.
    static func boto3(_ request: [String: Any]) async throws -> [String: String] {
        let python = try requireTool("python3", installedBy: "python3")
        let input = String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self)
        let environment = variables.filter {
            $0.key.hasPrefix("DBKEY_TEST_AWS_") || $0.key == "PATH" || $0.key == "HOME"
        }
        let result = try await run(
            python, [repositoryRoot.path + "/Scripts/interop/aws_kms.py"], input: input, environment: environment)
        #expect(result.status == 0, "aws_kms.py failed: \(result.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: String])
    }
}

/// The throttling front Scripts/moto starts before moto (Scripts/fakes/aws_throttle.py): every
/// request passes on to moto until its rate limit (matched against the operation,
/// `TrentService.Decrypt`) answers AWS KMS's `ThrottlingException`.
enum MotoThrottlingFront: FakeKmsServer {
    static func adminURL() throws -> URL { URL(string: try Moto.value("THROTTLING_ENDPOINT"))! }
    static func adminToken() throws -> String { try Moto.value("THROTTLING_ADMIN_TOKEN") }
}

/// Passes requests through and counts them by KMS operation: the AWS operation name, or for
/// other services the URL path (`/v1/transit/rewrap/NAME`).
final class CountingTransport: KmsTransport {
    private let inner: any KmsTransport
    private let counts = Mutex<[String: Int]>([:])

    init(_ inner: any KmsTransport = URLSessionKmsTransport()) {
        self.inner = inner
    }

    func count(_ operation: String) -> Int { counts.withLock { $0[operation, default: 0] } }

    func reset() { counts.withLock { $0.removeAll() } }

    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        let operation =
            request.headers.first { $0.name == "X-Amz-Target" }.map {
                String($0.value.dropFirst("TrentService.".count))
            }
            ?? request.url.path
        counts.withLock { $0[operation, default: 0] += 1 }
        return try await inner.send(request, timeout: timeout)
    }
}

/// Answers from a script: each call takes the next answer; when the script runs out, calls
/// go to the real transport.
final class ScriptedTransport: KmsTransport {
    enum Answer: Sendable {
        case status(Int, String)
        case unreachable
    }

    private let script: Mutex<[Answer]>
    private let inner: any KmsTransport
    private let callCount = Mutex(0)

    init(_ answers: [Answer], then inner: any KmsTransport = URLSessionKmsTransport()) {
        script = Mutex(answers)
        self.inner = inner
    }

    var calls: Int { callCount.withLock { $0 } }

    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        callCount.withLock { $0 += 1 }
        let next = script.withLock { $0.isEmpty ? nil : $0.removeFirst() }
        switch next {
        case .status(let status, let body):
            return KmsHTTPResponse(status: status, body: Data(body.utf8))
        case .unreachable:
            throw DBKeyError(.kmsUnavailable, "Scripted: connection refused.")
        case nil:
            return try await inner.send(request, timeout: timeout)
        }
    }
}

/// Times each exchange of the real transport.
final class TimingTransport: KmsTransport {
    private let inner = URLSessionKmsTransport()
    private let recorded = Mutex<[Duration]>([])

    var durations: [Duration] { recorded.withLock { $0 } }

    func send(_ request: KmsHTTPRequest, timeout: Duration) async throws -> KmsHTTPResponse {
        let clock = ContinuousClock()
        let start = clock.now
        defer {
            let elapsed = clock.now - start
            recorded.withLock { $0.append(elapsed) }
        }
        return try await inner.send(request, timeout: timeout)
    }
}
