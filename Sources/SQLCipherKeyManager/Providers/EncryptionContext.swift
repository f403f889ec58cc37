/// Key–value pairs bound to a wrapped data key: unwrapping needs exactly the same pairs.
///
/// The context is sent as the AWS KMS `EncryptionContext`, Vault's `context` or
/// `associated_data`, and the local provider's AES-GCM additional data. KMS audit logs show it,
/// so it must never hold secrets.
///
/// ```swift
/// let context: EncryptionContext = ["purpose": "medical-db", "environment": "production"]
/// ```
public struct EncryptionContext: Sendable, Hashable, CustomStringConvertible {
    /// The pairs, in the order of their keys' UTF-8 bytes.
    public let pairs: [(key: String, value: String)]

    /// An empty context.
    public static let empty = EncryptionContext(uncheckedSortedPairs: [])

    /// Creates a context from a dictionary.
    public init(_ dictionary: [String: String]) {
        self.init(
            uncheckedSortedPairs: dictionary.sorted { Array($0.key.utf8).lexicographicallyPrecedes($1.key.utf8) }
                .map { (key: $0.key, value: $0.value) })
    }

    private init(uncheckedSortedPairs: [(key: String, value: String)]) {
        self.pairs = uncheckedSortedPairs
    }

    /// The context as a dictionary.
    public var dictionary: [String: String] {
        Dictionary(uniqueKeysWithValues: pairs.map { ($0.key, $0.value) })
    }

    /// Whether there are no pairs.
    public var isEmpty: Bool { pairs.isEmpty }

    /// DBKey's canonical encoding: for each pair in key order, a big-endian `UInt32` length and
    /// the UTF-8 bytes of the key, then the same for the value.
    ///
    /// Length prefixes make the encoding injective (no two contexts share one) and independent
    /// of any JSON encoder's escaping rules.
    public var canonicalEncoding: [UInt8] {
        var bytes: [UInt8] = []
        for (key, value) in pairs {
            for field in [key, value] {
                let utf8 = Array(field.utf8)
                withUnsafeBytes(of: UInt32(utf8.count).bigEndian) { bytes.append(contentsOf: $0) }
                bytes.append(contentsOf: utf8)
            }
        }
        return bytes
    }

    public var description: String {
        "{" + pairs.map { "\($0.key)=\($0.value)" }.joined(separator: ", ") + "}"
    }

    public static func == (lhs: EncryptionContext, rhs: EncryptionContext) -> Bool {
        lhs.pairs.elementsEqual(rhs.pairs) { $0.key == $1.key && $0.value == $1.value }
    }

    public func hash(into hasher: inout Hasher) {
        for (key, value) in pairs {
            hasher.combine(key)
            hasher.combine(value)
        }
    }
}

extension EncryptionContext: ExpressibleByDictionaryLiteral {
    /// Creates a context from a literal; a repeated key keeps its last value.
    public init(dictionaryLiteral elements: (String, String)...) {
        self.init(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}

extension EncryptionContext {
    /// Parses `KEY=VALUE` arguments, as given to `dbkey init --context`.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` for an argument without
    ///   `=`, an empty key, or a key given twice.
    public init(parsing arguments: [String]) throws {
        var dictionary: [String: String] = [:]
        for argument in arguments {
            guard let separator = argument.firstIndex(of: "="), separator != argument.startIndex else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "A context entry must be KEY=VALUE with a non-empty KEY; got \"\(argument)\".")
            }
            let key = String(argument[..<separator])
            guard dictionary[key] == nil else {
                throw DBKeyError(.invalidConfiguration, "The context key \"\(key)\" is given twice.")
            }
            dictionary[key] = String(argument[argument.index(after: separator)...])
        }
        self.init(dictionary)
        try validate()
    }

    /// The most pairs a context may have.
    public static let maximumPairs = 16
    /// The longest key, in UTF-8 bytes.
    public static let maximumKeyBytes = 128
    /// The longest value, in UTF-8 bytes.
    public static let maximumValueBytes = 1024

    /// Checks the context against DBKey's limits, which keep every `.key` file that carries it
    /// readable in every state (a pending key change included) and stay within what the KMSs
    /// accept (AWS KMS takes 8,192 characters of context in all).
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/invalidConfiguration`` naming the limit.
    public func validate() throws {
        guard pairs.count <= Self.maximumPairs else {
            throw DBKeyError(
                .invalidConfiguration,
                "An encryption context may have at most \(Self.maximumPairs) pairs; this one has \(pairs.count).")
        }
        for (key, value) in pairs {
            guard !key.isEmpty, key.utf8.count <= Self.maximumKeyBytes else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "An encryption context key must be 1 to \(Self.maximumKeyBytes) bytes; one has \(key.utf8.count).")
            }
            guard value.utf8.count <= Self.maximumValueBytes else {
                throw DBKeyError(
                    .invalidConfiguration,
                    "The encryption context value of \"\(key)\" has \(value.utf8.count) bytes; the limit is \(Self.maximumValueBytes)."
                )
            }
        }
    }
}
