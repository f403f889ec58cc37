import Crypto
import Foundation
import Testing

@testable import SQLCipherKeyManager
@testable import KmsHTTP
@testable import SQLCipherKeyManagerAWS

/// AWS's published Signature Version 4 test suite, read from ../shared/fixtures.
@Suite("SigV4 against AWS's test suite", .tags(.aws))
struct SigV4Tests {
    static let suite = ThirdPartyFixture.root + "/aws-sig-v4-test-suite"

    /// Every case folder: a folder holding NAME.req, NAME.creq, NAME.sts and NAME.authz.
    static let cases: [String] = {
        guard let enumerator = FileManager.default.enumerator(atPath: suite) else { return [] }
        return enumerator.compactMap { $0 as? String }.filter { $0.hasSuffix(".req") }
            .map { String($0.dropLast(4)) }.sorted()
    }()

    static let credentials = AWSCredentials(
        accessKeyId: "AKIDEXAMPLE",
        secretAccessKey: Array("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".utf8).withUnsafeBytes {
            SecureBuffer(copying: $0)
        }
    )
    static let signer = SigV4Signer(service: "service", region: "us-east-1")

    @Test(
        "the suite is there, with every case folder",
        ThirdPartyFixture.required("aws-sig-v4-test-suite", from: ThirdPartyFixture.sigV4))
    func suitePresent() {
        #expect(Self.cases.count >= 28, "expected the whole suite in \(Self.suite), found \(Self.cases.count) cases")
    }

    @Test(
        "canonical request, string to sign and Authorization match",
        ThirdPartyFixture.required("aws-sig-v4-test-suite", from: ThirdPartyFixture.sigV4), arguments: cases)
    func signsLikeAWS(name: String) throws {
        let base = Self.suite + "/" + name
        let request = try Self.parse(try String(contentsOfFile: base + ".req", encoding: .utf8))
        let timestamp = try #require(request.headers.first { $0.name.lowercased() == "x-amz-date" }?.value)
        let canonical = try String(contentsOfFile: base + ".creq", encoding: .utf8)
        let stringToSign = try String(contentsOfFile: base + ".sts", encoding: .utf8)
        #expect(Self.signer.canonicalRequest(request) == canonical)
        // The suite's own files must agree: its .sts ends with the SHA-256 of its .creq. In two
        // published cases they do not (their .sts was made over "charset=utf8" and no
        // Content-Length, their .req says "charset=utf-8" and has one), so no signer can match
        // both; for those, only the canonical request is checked.
        let consistent = stringToSign.hasSuffix(SHA256.hash(data: Array(canonical.utf8)).lowercaseHex)
        guard consistent else {
            #expect(Self.inconsistentInSuite.contains(name), "the suite's .creq and .sts disagree in \(name)")
            return
        }
        #expect(Self.signer.stringToSign(request, timestamp: timestamp) == stringToSign)
        #expect(
            Self.signer.authorization(for: request, credentials: Self.credentials, timestamp: timestamp)
                == (try String(contentsOfFile: base + ".authz", encoding: .utf8))
        )
    }

    static let inconsistentInSuite: Set<String> = [
        "post-x-www-form-urlencoded/post-x-www-form-urlencoded",
        "post-x-www-form-urlencoded-parameters/post-x-www-form-urlencoded-parameters",
    ]

    @Test("sign() adds the date, the session token (signed) and the Authorization header")
    func signAddsHeaders() throws {
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
        let credentials = AWSCredentials(
            accessKeyId: "AKID",
            secretAccessKey: Array(secret.utf8).withUnsafeBytes { SecureBuffer(copying: $0) },
            sessionToken: "FQoGZXIvYXdzEXAMPLETOKEN"
        )
        let request = SigV4Request(
            method: "POST", path: "/", query: "", headers: [(name: "Host", value: "kms.example")], body: [])
        let signed = Self.signer.sign(
            request, credentials: credentials, date: Date(timeIntervalSince1970: 1_440_938_160))
        let names = signed.headers.map { $0.name.lowercased() }
        #expect(names == ["host", "x-amz-date", "x-amz-security-token", "authorization"])
        #expect(signed.headers[1].value == "20150830T123600Z")
        #expect(signed.headers[3].value.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"))
        for text in [credentials.description, "\(credentials)", signed.headers.last!.value] {
            #expect(!text.contains(secret) && !text.contains("FQoGZXIvYXdzEXAMPLETOKEN"))
        }
    }

    /// Parses a `.req` file: request line, headers (continuation lines start with spaces and
    /// count as further values of the header), a blank line, the body.
    static func parse(_ text: String) throws -> SigV4Request {
        let lines = text.components(separatedBy: "\n")
        let requestLine = lines[0]
        let method = String(requestLine.prefix { $0 != " " })
        let target = requestLine.dropFirst(method.count + 1)
        let end = try #require(target.range(of: " HTTP/", options: .backwards))
        let pathAndQuery = String(target[..<end.lowerBound])
        let path = String(pathAndQuery.prefix { $0 != "?" })
        let query = pathAndQuery.count > path.count ? String(pathAndQuery.dropFirst(path.count + 1)) : ""
        var headers: [(name: String, value: String)] = []
        var index = 1
        while index < lines.count, !lines[index].isEmpty {
            let line = lines[index]
            if line.first == " " || line.first == "\t", let last = headers.last {
                headers.append((name: last.name, value: line))
            } else if let colon = line.firstIndex(of: ":") {
                headers.append((name: String(line[..<colon]), value: String(line[line.index(after: colon)...])))
            }
            index += 1
        }
        let body = index + 1 < lines.count ? lines[(index + 1)...].joined(separator: "\n") : ""
        return SigV4Request(method: method, path: path, query: query, headers: headers, body: Array(body.utf8))
    }
}
