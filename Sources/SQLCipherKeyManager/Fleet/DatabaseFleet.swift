import Foundation
import SystemPackage

/// Many managed databases under one directory — one per tenant or per user — found without
/// following links and worked through a few at a time (`dbkey rewrap --all`, `rotate --all`,
/// `doctor --all`).
///
/// ```swift
/// let found = try DatabaseFleet.discover(under: "/srv/tenants")
/// let outcomes = await DatabaseFleet.run(found.databases, jobs: 8) { path in
///     .init(databasePath: path, status: .unchanged, detail: "looked at")
/// }
/// print(outcomes.count, found.refused.count)
/// ```
public enum DatabaseFleet {
    /// What happened to one database.
    public struct Outcome: Sendable, Hashable {
        /// The outcome's class.
        public enum Status: String, Sendable, Hashable, CaseIterable {
            /// The change was made.
            case done
            /// Nothing to do: already as asked (a second run of a finished or interrupted fleet
            /// operation reports what the first did as this).
            case unchanged
            /// A dry run: the change would be made.
            case wouldChange = "would-change"
            /// Not attempted now: the database is in use.
            case skipped
            /// The change failed; the detail says why.
            case failed
        }

        /// The database's path.
        public let databasePath: String
        /// The outcome's class.
        public let status: Status
        /// What was done or found.
        public let detail: String

        /// Creates an outcome.
        public init(databasePath: String, status: Status, detail: String) {
            self.databasePath = databasePath
            self.status = status
            self.detail = detail
        }
    }

    /// The managed databases below `directory`: every regular `<db>.key` file, in path order;
    /// a local master key file among them (base64, not a `.key` file's JSON) is left out.
    /// Symbolic links — to files or to directories — are never followed (the walk never leaves
    /// the tree) and are returned as refused, with the reason.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` when `directory` cannot be read.
    public static func discover(under directory: String) throws -> (
        databases: [String], refused: [(path: String, reason: String)]
    ) {
        var databases: [String] = []
        var refused: [(String, String)] = []
        var pending = [directory]
        while let folder = pending.popLast() {
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: folder)
            } catch {
                guard folder == directory else {
                    refused.append((folder, "cannot be read"))
                    continue
                }
                throw DBKeyError(.io, "Cannot read the directory \(folder).", path: folder)
            }
            for name in names {
                let path = folder + "/" + name
                guard let status = try? FilePath(path).stat(followTargetSymlink: false) else { continue }
                switch status.type {
                case .symbolicLink:
                    refused.append((path, "a symbolic link, not followed"))
                case .directory:
                    pending.append(path)
                case .regular:
                    if let database = DatabaseFiles.database(ofKeyFile: path), !isOtherKeyFile(path) {
                        databases.append(database)
                    }
                default:
                    continue
                }
            }
        }
        return (databases.sorted(), refused.sorted { $0.0 < $1.0 })
    }

    /// Whether a `*.key` file is some other key than a database's: a `.key` file is a JSON
    /// object, a local master key file (`master.key`, kept beside the databases it wraps) is
    /// base64. Its first bytes are read into secure memory, as they may be a secret's; an empty
    /// or unreadable file stays a database's, to be reported.
    static func isOtherKeyFile(_ path: String) -> Bool {
        guard
            let descriptor = try? FileDescriptor.open(
                FilePath(path), .readOnly, options: [.noFollow, .closeOnExec], retryOnInterrupt: true)
        else { return false }
        defer { try? descriptor.close() }
        var read = 0
        let start = SecureBuffer(count: 16) { bytes in
            read = (try? descriptor.read(into: bytes, retryOnInterrupt: true)) ?? 0
        }
        return start.withUnsafeBytes { bytes in
            let whitespace: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0D]
            guard let first = bytes.prefix(read).first(where: { !whitespace.contains($0) }) else { return false }
            return first != UInt8(ascii: "{")
        }
    }

    /// Runs `work` on every database, at most `jobs` at a time, and returns the outcomes in
    /// the order of `databases`; `onOutcome` sees each as it comes (for progress).
    public static func run(
        _ databases: [String],
        jobs: Int,
        onOutcome: (@Sendable (Outcome) -> Void)? = nil,
        _ work: @escaping @Sendable (String) async -> Outcome
    ) async -> [Outcome] {
        var results = [Outcome?](repeating: nil, count: databases.count)
        await withTaskGroup(of: (Int, Outcome).self) { group in
            var next = 0
            func start() {
                guard next < databases.count else { return }
                let index = next
                next += 1
                group.addTask { (index, await work(databases[index])) }
            }
            for _ in 0..<max(1, jobs) { start() }
            while let (index, outcome) = await group.next() {
                results[index] = outcome
                onOutcome?(outcome)
                start()
            }
        }
        return results.compactMap { $0 }
    }
}
