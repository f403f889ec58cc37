extension DatabaseConnection {
    /// Applies `settings` right after the key, each read back (SQLCipher ignores pragmas it
    /// does not know): on SQLCipher 4.x the format first (`cipher_compatibility`, which resets
    /// the page size) and its algorithms, then the page size, then the plaintext header and
    /// the salt it needs.
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
        } else if settings.hmacAlgorithm != nil || settings.kdfAlgorithm != nil {
            throw DBKeyError(
                .unsupportedFormat,
                "\(path) records HMAC or KDF algorithms, which the linked SQLCipher \(engine.version) cannot set. Link SQLCipher 4 (see the README).",
                path: path)
        }
        try setCipherPragma(prefix + "cipher_page_size", to: String(settings.pageSize))
        if settings.plaintextHeaderSize > 0, let salt = settings.salt {
            try setCipherPragma(prefix + "cipher_plaintext_header_size", to: String(settings.plaintextHeaderSize))
            let saltHex = salt.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
            try setCipherPragma(prefix + "cipher_salt", to: "\"x'\(saltHex)'\"", answer: saltHex)
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
                "\(path) is in the SQLCipher \(format) format, which the linked SQLCipher \(engine.version) cannot read. Link SQLCipher 4 (see the README's \"SQLCipher versions\"); the database was left untouched.",
                path: path)
        }
        return engine
    }

    /// Sets a cipher pragma and reads it back; the answer must be `answer` (by default `value`),
    /// as text or number, in any case.
    func setCipherPragma(_ name: String, to value: String, answer expected: String? = nil) throws {
        try execute("PRAGMA \(name) = \(value)")
        let answer = try fetchAll("PRAGMA \(name)").first?[0]
        let text = answer?.textValue ?? answer?.integerValue.map(String.init)
        guard let text, text.lowercased() == (expected ?? value).lowercased() else {
            throw DBKeyError(
                .unsupportedFormat,
                "The linked SQLCipher did not accept PRAGMA \(name) = \(value); it answered \(answer.map { "\($0)" } ?? "nothing")."
            )
        }
    }
}
