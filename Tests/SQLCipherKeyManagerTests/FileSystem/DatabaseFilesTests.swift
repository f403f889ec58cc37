import Foundation
import Testing

@testable import SQLCipherKeyManager

/// One type names every file beside a database; doctor, cleanup and the fleet go through it.
@Suite("The files beside a database", .tags(.core))
struct DatabaseFilesTests {
    @Test(
        "doctor judges the mode of every file beside the database, and names each copy a key change, backup or restore left"
    )
    func doctorSeesEveryFile() async throws {
        let database = try await TestDatabase(rows: 5)
        let manager = database.manager()
        let files = DatabaseFiles(database.path)
        #expect(Set(files.all).count == files.all.count, "each file has a name of its own")
        #expect(await manager.doctor().findings.isEmpty)
        for file in files.all {
            let existed = FileManager.default.fileExists(atPath: file)
            if !existed {
                #expect(
                    FileManager.default.createFile(atPath: file, contents: nil, attributes: [.posixPermissions: 0o600]))
            }
            #expect(chmod(file, 0o640) == 0)
            let findings = await manager.doctor().findings
            #expect(
                findings.contains { $0.check == "file-mode" && $0.message.hasPrefix(file + " has mode 640") },
                "\(file): \(findings)")
            #expect(chmod(file, 0o600) == 0)
            if !existed { try FileManager.default.removeItem(atPath: file) }
        }
        for copy in files.keyChangeCopies.map(\.path) + [files.backupCopy, files.restoringCopy] {
            #expect(
                FileManager.default.createFile(atPath: copy, contents: nil, attributes: [.posixPermissions: 0o600]))
            let findings = await manager.doctor().findings
            #expect(
                findings.contains { $0.check == "stale-temporary" && $0.message.hasPrefix(copy + " is ") },
                "\(copy): \(findings)")
            try FileManager.default.removeItem(atPath: copy)
        }
        // An open removes a key change's copy that no record names.
        for copy in files.keyChangeCopies.map(\.path) {
            #expect(
                FileManager.default.createFile(atPath: copy, contents: nil, attributes: [.posixPermissions: 0o600]))
        }
        try await manager.open().close()
        #expect(files.keyChangeCopies.allSatisfy { !FileManager.default.fileExists(atPath: $0.path) })
        #expect(await manager.doctor().findings.isEmpty)
    }

    @Test("a .key file's name gives its database's, and only a name of the form <db>.key does")
    func databaseOfKeyFile() {
        #expect(DatabaseFiles.database(ofKeyFile: "/data/app.db.key") == "/data/app.db")
        #expect(DatabaseFiles.database(ofKeyFile: DatabaseFiles("/data/notes").keyFile) == "/data/notes")
        #expect(DatabaseFiles.database(ofKeyFile: "/data/.key") == nil)
        #expect(DatabaseFiles.database(ofKeyFile: ".key") == nil)
        #expect(DatabaseFiles.database(ofKeyFile: "/data/app.db.key.lock") == nil)
        #expect(DatabaseFiles.database(ofKeyFile: "/data/app.db") == nil)
    }
}
