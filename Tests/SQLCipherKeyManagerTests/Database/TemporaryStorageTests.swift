import CSQLCipher
import Foundation
import SQLCipherKeyManagerTesting
import Testing

@testable import SQLCipherKeyManager

/// SQLite's temporary files are not encrypted: every connection DBKey opens or keys keeps them
/// in memory, and user SQL cannot move them back to disk.
@Suite("Temporary storage stays in memory", .tags(.engine, .core))
struct TemporaryStorageTests {
    static let refusedStatements: [String] = [
        "PRAGMA temp_store = FILE",
        "PRAGMA temp_store=1",
        "pragma TEMP_STORE = default",
        "PRAGMA temp_store = 0",
        "PRAGMA main.temp_store = file",
        "PRAGMA temp.temp_store = 1",
        "PRAGMA \"temp_store\" = 'FILE'",
        "PRAGMA temp_store(1)",
        "PRAGMA Temp_Store = MEMORY",
        "PRAGMA temp_store_directory = '/var/tmp'",
        "PRAGMA temp_store_directory('/tmp')",
        "PRAGMA temp_store_directory",
    ]

    /// Work that puts SQLite's temporary storage to use: a sort larger than its in-memory
    /// threshold, a temporary table and index, a statement journal, `VACUUM`.
    static let temporaryWork = """
        CREATE TABLE big(x, y);
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000)
            INSERT INTO big SELECT i, randomblob(200) FROM c;
        PRAGMA cache_size = 20;
        SELECT count(*) FROM (SELECT y FROM big ORDER BY y);
        CREATE TEMP TABLE copy AS SELECT * FROM big;
        CREATE INDEX copy_y ON copy(y);
        UPDATE big SET x = x + 1;
        VACUUM;
        """

    /// Counts the files created in a directory from now on (inotify: the kernel queues every
    /// creation, even of a file unlinked at once, as SQLite's temporary files are).
    final class CreationWatch {
        let descriptor: Int32

        init(_ directory: String) throws {
            descriptor = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
            guard descriptor >= 0, inotify_add_watch(descriptor, directory, UInt32(IN_CREATE)) >= 0 else {
                throw DBKeyError(.io, "inotify on \(directory) failed: errno \(errno)")
            }
        }

        deinit { close(descriptor) }

        /// The names created since the watch began.
        func created() -> [String] {
            var names: [String] = []
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress, $0.count) }
                guard count > 0 else { return names }
                var offset = 0
                while offset < count {
                    let (length, name) = buffer.withUnsafeBytes { bytes -> (Int, String) in
                        let length = Int(bytes.load(fromByteOffset: offset + 12, as: UInt32.self))
                        let start = offset + 16
                        let name = bytes[start..<(start + length)].prefix { $0 != 0 }
                        return (length, String(decoding: name, as: UTF8.self))
                    }
                    names.append(name)
                    offset += 16 + length
                }
            }
        }
    }

    @Test("temp_store and temp_store_directory are refused in every spelling, through the library and dbkey sql")
    func spellingsRefused() async throws {
        let directory = try TemporaryDirectory()
        let manager = DatabaseKeyManager(
            databasePath: directory.file("t.db"), kms: MockKms(seed: 61), configuration: .init(kekId: "k"),
            logger: silentLogger)
        try await manager.initialize()
        let db = try await manager.open()
        defer { db.close() }
        for sql in Self.refusedStatements {
            for (name, run) in [
                ("execute", { try db.execute(sql) }), ("fetchAll", { _ = try db.fetchAll(sql) }),
                ("prepare", { _ = try db.prepare(sql) }),
            ] as [(String, () throws -> Void)] {
                let error = await expectError(.sqlite) { try run() }
                #expect(error?.resultCode == .SQLITE_AUTH, "\(sql) through \(name)")
                #expect(error?.message.contains("temp_store") == true, "\(sql): \(error?.message ?? "-")")
            }
        }
        // Reading the setting stays allowed, and it is MEMORY (2).
        #expect(try db.fetchAll("PRAGMA temp_store").first?[0] == .integer(2))

        let workspace = try DBKeyCLITests.Workspace()
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)
        for sql in Self.refusedStatements {
            let result = try await workspace.dbkey("sql", workspace.database, sql)
            #expect(result.status == 40 && result.stderr.contains("temp_store"), "\(sql): \(result.stderr)")
        }
        #expect(try await workspace.dbkey("sql", workspace.database, "PRAGMA temp_store").stdout == "2\n")
    }

    @Test("a large sort, a temporary table and index, and VACUUM through dbkey sql create no file; the shell's do")
    func noTemporaryFiles() async throws {
        let workspace = try DBKeyCLITests.Workspace()
        let temporary = workspace.directory.file("sqlite-tmp")
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        #expect(try await workspace.dbkey("init", workspace.database).status == 0)

        // The probe sees SQLite's temporary files: the sqlcipher shell told to use files makes them.
        let sqlcipher = try requireTool("sqlcipher", installedBy: "Scripts/setup")
        let control = try CreationWatch(temporary)
        var environment = workspace.environment
        environment["SQLITE_TMPDIR"] = temporary
        let shell = try await run(
            sqlcipher, [workspace.directory.file("plain.db")],
            input: "PRAGMA temp_store = FILE;\n" + Self.temporaryWork,
            environment: environment)
        #expect(shell.status == 0, "\(shell.stderr)")
        #expect(!control.created().isEmpty, "the probe saw no temporary file from the shell")

        let watch = try CreationWatch(temporary)
        let result = try await workspace.dbkey(
            ["sql", workspace.database, Self.temporaryWork], environment: ["SQLITE_TMPDIR": temporary])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("20000"))
        #expect(watch.created().isEmpty, "dbkey sql wrote temporary files: \(watch.created())")
        let left = try FileManager.default.contentsOfDirectory(atPath: workspace.directory.path).filter {
            $0.hasPrefix("etilqs") || $0.contains("-mj")
        }
        #expect(left.isEmpty, "\(left)")
    }

    @Test(
        "a handle keyed through KeyLease.apply(to:) keeps temporary storage in memory, even one told to use files before"
    )
    func keyingSeamSetsMemory() async throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("seam.db")
        let manager = DatabaseKeyManager(
            databasePath: path, kms: MockKms(seed: 62), configuration: .init(kekId: "k"), logger: silentLogger)
        try await manager.initialize()
        let key = try await manager.leaseKey()
        defer { key.release() }
        var handle: OpaquePointer?
        #expect(sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK)
        defer { sqlite3_close_v2(handle) }
        let opened = try #require(handle)
        // The probe sees SQLite's temporary files: an unkeyed connection told to use files has one
        // open (unlinked, as SQLite makes them) while its temporary table exists.
        let control = try DatabaseConnection.open(path: ":memory:", keying: .plaintext, create: true)
        try control.execute(
            "PRAGMA temp_store = FILE; PRAGMA temp.cache_size = 10; CREATE TEMP TABLE c AS \(Self.fiveMegabytes)")
        #expect(Self.openTemporaryFiles() > 0, "the probe saw no temporary file")
        control.close()
        // An app whose SQLite defaults to files (or that asked for them) before keying the handle.
        let connection = DatabaseConnection.borrowing(opened)
        try connection.execute("PRAGMA temp_store = FILE")
        try key.apply(to: opened)
        #expect(try connection.fetchAll("PRAGMA temp_store").first?[0] == .integer(2))
        try connection.execute("PRAGMA temp.cache_size = 10; CREATE TEMP TABLE copy AS \(Self.fiveMegabytes)")
        #expect(Self.openTemporaryFiles() == 0, "a temporary table of a keyed handle went to a file")
        connection.close()
    }

    /// Rows enough to spill a temporary table out of a 10-page cache.
    static let fiveMegabytes =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000) "
        + "SELECT randomblob(1000) AS x FROM n"

    /// How many of SQLite's temporary files (`etilqs_…`) this process has open.
    static func openTemporaryFiles() -> Int {
        let descriptors = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return descriptors.filter { descriptor in
            let target =
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + descriptor)) ?? ""
            return target.contains("etilqs_")
        }.count
    }

    @Test("a library that always writes temporary files (SQLITE_TEMP_STORE=0) is refused at open")
    func alwaysOnDiskRefused() throws {
        let connection = try DatabaseConnection.open(path: ":memory:", keying: .plaintext, create: true)
        defer { connection.close() }
        let error = #expect(throws: DBKeyError.self) {
            try connection.keepTemporaryStorageInMemory(alwaysOnDisk: true)
        }
        #expect(error?.code == .unsupportedFormat && error?.message.contains("SQLITE_TEMP_STORE=0") == true)
        // The engines DBKey is tested on are not such builds.
        #expect(!SQLCipherEngine.tempStoreAlwaysOnDisk)
    }
}
