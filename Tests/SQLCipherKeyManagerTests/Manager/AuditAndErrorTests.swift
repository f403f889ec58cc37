import Foundation
@testable import SQLCipherKeyManager
import SQLCipherKeyManagerTesting
import Synchronization
import SystemPackage
import Testing

/// A sink that keeps every event, for tests.
final class RecordingAuditSink: AuditSink {
    private let storage = Mutex<[AuditEvent]>([])
    var events: [AuditEvent] { storage.withLock { $0 } }
    func record(_ event: AuditEvent) { storage.withLock { $0.append(event) } }
}

@Suite("Audit events and error details", .tags(.core))
struct AuditAndErrorTests {
    @Test("every key event reaches the app's AuditSink with path, provider, KEK id and version, and no key")
    func auditSink() async throws {
        let directory = try TemporaryDirectory()
        let sink = RecordingAuditSink()
        let kms = MockKms(seed: 41)
        let configuration = DatabaseKeyManager.Configuration(kekId: "k", keyCacheTTL: .zero, auditSink: sink)
        let path = directory.file("audit.db")
        let manager = DatabaseKeyManager(
            databasePath: path, kms: kms, configuration: configuration, logger: silentLogger)
        try await manager.initialize()
        try await manager.open().close()
        try await manager.rotateKey()
        try await manager.rewrap(to: kms, kekId: "k2")
        kms.failNext(1, [.decrypt])
        await expectError(.kmsUnavailable) { _ = try await manager.open() }
        // An interrupted rotation, recovered by the next open.
        let failing = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(kms), configuration: configuration, logger: silentLogger,
            faultInjector: { if $0 == .writingFinalKeyFile { throw DBKeyError(.io, "injected") } })
        await expectError(.io) { try await failing.rotateKey() }
        try await manager.open().close()
        // A migration.
        let plain = directory.file("plain.db")
        let db = try DatabaseConnection.open(path: plain, keying: .plaintext, create: true)
        try db.execute("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        db.close()
        try await DatabaseKeyManager(databasePath: plain, kms: kms, configuration: configuration, logger: silentLogger)
            .migrate(from: .plaintext)

        // An upgrade to the SQLCipher 4 format, where the linked SQLCipher writes it.
        let engine = try SQLCipherEngine.linked()
        if engine.newDatabaseFormat >= 4 {
            let old = directory.file("old.db")
            try await makeFormat3Database(path: old, kms: kms, kekId: "k", rows: 2)
            try await DatabaseKeyManager(
                databasePath: old, kms: kms, configuration: configuration, logger: silentLogger
            )
            .upgrade()
        }

        // Key slots: one added, used while the primary is down, removed; a recovery.
        let backup = MockKms(seed: 42, providerName: "backup")
        let slotted = DatabaseKeyManager(
            databasePath: path, providers: KmsRegistry(providers: [kms, backup]), configuration: configuration,
            logger: silentLogger)
        try await slotted.addSlot(backup, kekId: "b")
        kms.failNext(1, [.decrypt])
        try await slotted.open().close()
        try await slotted.recover(through: .slot(1), to: kms, kekId: "k3")
        try await slotted.removeSlot(1)
        // A backup and its restore.
        try await slotted.backup(to: directory.file("backup.db"))
        try await DatabaseKeyManager(
            databasePath: directory.file("restored.db"), kms: kms, configuration: configuration, logger: silentLogger
        ).restore(from: directory.file("backup.db"))

        let events = sink.events
        let kinds = events.map(\.kind)
        for kind in AuditEvent.Kind.allCases where kind != .databaseUpgraded || engine.newDatabaseFormat >= 4 {
            #expect(kinds.contains(kind), "no \(kind.rawValue) event in \(kinds.map(\.rawValue))")
        }
        #expect(kinds.first == .keyGenerated)
        let rotated = try #require(events.first { $0.kind == .keyRotated })
        #expect(rotated.databasePath == path && rotated.provider == "mock" && rotated.dekVersion == 2)
        #expect(rotated.kekId == "mock:k")
        let rewrapped = try #require(events.first { $0.kind == .keyRewrapped })
        #expect(rewrapped.kekId == "mock:k2" && rewrapped.dekVersion == 2)
        #expect(events.first { $0.kind == .openFailed }?.detail == "kms-unavailable")
        #expect(events.first { $0.kind == .keyChangeRecovered }?.dekVersion == 3)
        #expect(events.first { $0.kind == .databaseMigrated }?.databasePath == plain)
        let text = events.map { "\($0)" }.joined(separator: "\n").lowercased()
        #expect(events.first { $0.kind == .slotUsed }?.provider == "backup")
        #expect(events.first { $0.kind == .keyRecovered }?.kekId == "mock:k3")
        for index: UInt64 in 0..<4 {
            #expect(!text.contains(hex(MockKms.dataKey(seed: 41, index: index))))
        }
    }

    @Test("errors carry the file, the KEK, swift-system's Errno and the underlying error")
    func errorDetails() async throws {
        let directory = try TemporaryDirectory()
        let manager = DatabaseKeyManager(
            databasePath: directory.file("e.db"), kms: MockKms(seed: 42), configuration: .init(kekId: "k"),
            logger: silentLogger)
        try await manager.initialize()
        // A symlinked .key: refused with ELOOP and the path.
        let keyPath = manager.keyFilePath
        try FileManager.default.moveItem(atPath: keyPath, toPath: keyPath + ".real")
        try FileManager.default.createSymbolicLink(atPath: keyPath, withDestinationPath: keyPath + ".real")
        let insecure = await expectError(.keyFileInsecure) { _ = try manager.load() }
        #expect(insecure?.errno == .tooManySymbolicLinkLevels)
        #expect(insecure?.path == keyPath)
        try FileManager.default.removeItem(atPath: keyPath)
        try FileManager.default.moveItem(atPath: keyPath + ".real", toPath: keyPath)

        // A KMS failure names the KEK and the .key file.
        let failing = MockKms(seed: 42)
        failing.failNext(1, [.decrypt])
        let outage = await expectError(.kmsUnavailable) {
            _ = try await DatabaseKeyManager(
                databasePath: manager.databasePath, kms: failing, configuration: .init(kekId: "k"), logger: silentLogger
            ).open()
        }
        #expect(outage?.kekId == "mock:k" && outage?.path == keyPath)

        // A failed system call keeps its Errno as the underlying error.
        let io = DBKeyError.io(Errno.noSpace, "write", "/x")
        #expect(io.errno == .noSpace && io.path == "/x" && (io.underlying as? Errno) == .noSpace)
        #expect(io.message.contains("disk is full"))
    }
}
