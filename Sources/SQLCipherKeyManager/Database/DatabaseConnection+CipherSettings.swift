import Synchronization

extension DatabaseConnection {
    /// Applies `settings` right after the key: on SQLCipher 4.x the format first
    /// (`cipher_compatibility`, which sets the format's page size) and its algorithms, then the
    /// page size when it is not the one the format set, then the plaintext header and the salt
    /// it needs.
    ///
    /// SQLCipher ignores pragmas it does not know, so each is read back — once per process for
    /// each name and value (``CipherPragmaAnswers``): the linked engine does not change while
    /// the process runs, and settings it did not take would fail the key's first read anyway.
    ///
    /// - Parameter schema: The attached database to apply them to; `nil` for `main`.
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` for a format the linked
    ///   SQLCipher cannot read; ``DBKeyError/Code-swift.struct/keyFileCorrupt`` for settings no
    ///   SQLCipher can use.
    func apply(_ settings: CipherSettings, schema: String? = nil) throws {
        let prefix = schema.map { $0 + "." } ?? ""
        if let problem = settings.problem {
            throw DBKeyError(.keyFileCorrupt, "The cipher settings of \(path) are invalid: \(problem).")
        }
        let engine = try requireEngine(reading: settings.format)
        var pageSizeSet = false
        if engine.majorVersion >= 4 {
            // Always set, even to the engine's default: an app may have changed the defaults
            // for the process (cipher_default_compatibility). It has no getter; SQLCipher 4
            // knows it, and a format it did not take fails the first read.
            try execute("PRAGMA \(prefix)cipher_compatibility = \(settings.format)")
            if let algorithm = settings.hmacAlgorithm {
                try setCipherPragma(prefix + "cipher_hmac_algorithm", to: algorithm.rawValue)
            }
            if let algorithm = settings.kdfAlgorithm {
                try setCipherPragma(prefix + "cipher_kdf_algorithm", to: algorithm.rawValue)
            }
            // Setting the page size again would only rebuild SQLCipher's page buffers.
            pageSizeSet = settings.pageSize == CipherSettings.compatibilityPageSize(format: settings.format)
            if pageSizeSet {
                try CipherPragmaAnswers.requireOnce("cipher_page_size after cipher_compatibility = \(settings.format)")
                {
                    try cipherPragmaAnswer(prefix + "cipher_page_size", is: String(settings.pageSize))
                }
            }
        } else if settings.hmacAlgorithm != nil || settings.kdfAlgorithm != nil {
            throw DBKeyError(
                .unsupportedFormat,
                "\(path) records HMAC or KDF algorithms, which the linked SQLCipher \(engine.version) cannot set. Link SQLCipher 4 (see \"SQLCipher Versions\" in DBKey's documentation).",
                path: path)
        }
        if !pageSizeSet {
            try setCipherPragma(prefix + "cipher_page_size", to: String(settings.pageSize))
        }
        if settings.plaintextHeaderSize > 0, let salt = settings.salt {
            try setCipherPragma(prefix + "cipher_plaintext_header_size", to: String(settings.plaintextHeaderSize))
            let saltHex = salt.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
            try setCipherPragma(
                prefix + "cipher_salt", to: "\"x'\(saltHex)'\"", answer: saltHex, answerKnownAs: "a salt")
        }
    }

    /// The linked engine, when it reads `format`.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/unsupportedFormat`` naming the engine otherwise.
    func requireEngine(reading format: Int) throws -> SQLCipherEngine {
        let engine = try SQLCipherEngine.linked()
        guard engine.supports(format: format) else {
            throw DBKeyError(
                .unsupportedFormat,
                "\(path) is in the SQLCipher \(format) format, which the linked SQLCipher \(engine.version) cannot read. Link SQLCipher 4 (see \"SQLCipher Versions\" in DBKey's documentation); the database was left untouched.",
                path: path)
        }
        return engine
    }

    /// Sets a cipher pragma and reads it back, the first time in the process it is set to this
    /// value (`answerKnownAs` names values that are all taken alike, such as salts); the answer
    /// must be `answer` (by default `value`), as text or number, in any case.
    func setCipherPragma(
        _ name: String, to value: String, answer expected: String? = nil, answerKnownAs valueKind: String? = nil
    ) throws {
        try execute("PRAGMA \(name) = \(value)")
        let unprefixed = name.split(separator: ".").last.map(String.init) ?? name
        try CipherPragmaAnswers.requireOnce("\(unprefixed) = \(valueKind ?? value)") {
            try cipherPragmaAnswer(name, is: expected ?? value, afterSetting: value)
        }
    }

    /// Reads a cipher pragma back; the answer must be `expected`, as text or number, in any case.
    private func cipherPragmaAnswer(_ name: String, is expected: String, afterSetting value: String? = nil) throws {
        let answer = try fetchAll("PRAGMA \(name)").first?[0]
        let text = answer?.textValue ?? answer?.integerValue.map(String.init)
        guard let text, text.lowercased() == expected.lowercased() else {
            let asked =
                value.map { "did not accept PRAGMA \(name) = \($0)" } ?? "does not give PRAGMA \(name) = \(expected)"
            throw DBKeyError(
                .unsupportedFormat,
                "The linked SQLCipher \(asked); it answered \(answer.map { "\($0)" } ?? "nothing")."
            )
        }
    }
}

/// The cipher pragma assignments the linked SQLCipher has answered as taken in this process,
/// so that each is read back once: the engine cannot change while the process runs.
enum CipherPragmaAnswers {
    private static let proven = Mutex<Set<String>>([])
    /// Past this many, assignments are read back every time (each is a name and a value).
    private static let capacity = 256

    /// Runs `check` unless `assignment` was proven before, and remembers it once it passes.
    static func requireOnce(_ assignment: String, _ check: () throws -> Void) throws {
        guard !proven.withLock({ $0.contains(assignment) }) else { return }
        try check()
        proven.withLock { if $0.count < capacity { $0.insert(assignment) } }
    }
}
