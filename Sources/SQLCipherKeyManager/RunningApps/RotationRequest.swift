import Foundation
import Logging
import SystemPackage

/// An operator's request that the app holding a database rotate its key.
///
/// A running app's ``ConnectionPool`` holds the database's shared lock for as long as it lives,
/// so another process can never take the exclusive lock a rotation needs. Instead it leaves a
/// request beside the database, `<db>.key.rotate-request`; a pool opened with
/// `answeringRotationRequests` set notices it, claims it (renaming it to
/// `<db>.key.rotate-claimed`, so that exactly one app answers and a withdrawn request is never
/// carried out), rotates online, and writes the outcome to `<db>.key.rotate-result`, which the
/// requester reads and removes. `dbkey rotate --request` is the requester; so is
/// ``DatabaseKeyManager/requestRotation(timeout:dropUnreachableSlots:)``.
///
/// The files hold no key material: an id, a flag, and the outcome (a key version, or an error
/// code and message). They are written atomically with mode 0600, and read only as regular
/// files of the requester's owner (no symbolic links), of at most 4 KiB.
public enum RotationRequest {
    static func requestPath(_ databasePath: String) -> String { DatabaseFiles(databasePath).rotationRequest }
    static func claimedPath(_ databasePath: String) -> String { DatabaseFiles(databasePath).claimedRotationRequest }
    static func resultPath(_ databasePath: String) -> String { DatabaseFiles(databasePath).rotationResult }

    private static let maxSize = 4096

    // MARK: - The app's side

    /// Claims and carries out the database's pending request, if there is one, and writes its
    /// outcome. A request that cannot be read is answered with its error.
    static func answer(database: ManagedDatabase) async {
        let path = database.databasePath
        guard let claim = claim(path) else { return }
        defer {
            // The claim goes before its lock: a requester never sees an unheld claim of a live app.
            _ = unlink(claimedPath(path))
            try? claim.close()
        }
        var outcome = Outcome(status: .failed)
        do {
            let request = try read(Request.self, from: claimedPath(path), kind: "rotation request")
            guard let id = request.id, !id.isEmpty, id.count <= 64 else {
                throw DBKeyError(
                    .invalidConfiguration, "The rotation request \(requestPath(path)) has no valid id.", path: path)
            }
            outcome.id = id
            database.logger.debug("Carrying out a rotation request", metadata: ["request": "\(id)"])
            let rotated = try await Rotation(
                database: database, dropUnreachableSlots: request.dropUnreachableSlots ?? false
            ).run(wait: .zero, progress: nil)
            outcome.status = .rotated
            outcome.dekVersion = rotated.version
        } catch let error as DBKeyError {
            outcome.code = error.code.rawValue
            outcome.message = error.message
        } catch {
            outcome.code = DBKeyError.Code.io.rawValue
            outcome.message = "The rotation failed: \(type(of: error))."
        }
        do {
            try write(outcome, to: resultPath(path))
        } catch {
            database.logger.debug(
                "Writing a rotation request's outcome failed", metadata: ["error": "\(error)"])
        }
    }

    /// Claims the request: an exclusive `flock` on the request file, taken before it is renamed
    /// to the claimed name and held until the answer is written, so that a requester can tell
    /// a claim whose app is gone (its lock released by the kernel) from one being carried out.
    ///
    /// - Returns: The locked descriptor, or `nil` when there is no request or another app has it.
    private static func claim(_ path: String) -> FileDescriptor? {
        guard
            let descriptor = try? FileDescriptor.open(
                requestPath(path), .readOnly, options: [.noFollow, .closeOnExec], retryOnInterrupt: true)
        else { return nil }
        guard flock(descriptor.rawValue, LOCK_EX | LOCK_NB) == 0, rename(requestPath(path), claimedPath(path)) == 0,
            let locked = try? descriptor.stat(),
            let claimed = try? FilePath(claimedPath(path)).stat(followTargetSymlink: false),
            locked.deviceID == claimed.deviceID && locked.inode == claimed.inode
        else {
            // No request, another app's, or a request replaced between the open and the rename
            // (the renamed file is then not the one locked: leave it to the next look).
            try? descriptor.close()
            return nil
        }
        return descriptor
    }

    /// What became of a claimed request.
    enum ClaimState {
        /// No claim.
        case none
        /// An app holds it: the rotation is under way.
        case held
        /// The claim is there but no process holds it: the app stopped before answering.
        case abandoned
    }

    /// Whether the database's claimed request is held by a live app (its `flock`).
    static func claimState(_ databasePath: String) -> ClaimState {
        guard
            let descriptor = try? FileDescriptor.open(
                claimedPath(databasePath), .readOnly, options: [.noFollow, .closeOnExec], retryOnInterrupt: true)
        else { return access(claimedPath(databasePath), F_OK) == 0 ? .held : .none }
        defer { try? descriptor.close() }
        return flock(descriptor.rawValue, LOCK_SH | LOCK_NB) == 0 ? .abandoned : .held
    }

    /// Removes a claimed request whose app stopped after it answered, or before: its claim is
    /// held by no process. Called under the database's exclusive lock, which no running app
    /// leaves to anyone: no claim can be made meanwhile.
    static func removeAbandonedClaim(_ databasePath: String) {
        guard
            let descriptor = try? FileDescriptor.open(
                claimedPath(databasePath), .readOnly, options: [.noFollow, .closeOnExec], retryOnInterrupt: true)
        else { return }
        defer { try? descriptor.close() }
        if flock(descriptor.rawValue, LOCK_EX | LOCK_NB) == 0 {
            _ = unlink(claimedPath(databasePath))
        }
    }

    // MARK: - The requester's side

    /// Leaves a request, waits up to `timeout` for an app to claim and answer it, and returns
    /// the rotated `.key` — see ``DatabaseKeyManager/requestRotation(timeout:dropUnreachableSlots:)``.
    static func request(
        database: ManagedDatabase, timeout: Duration, dropUnreachableSlots: Bool
    ) async throws -> KeyFile {
        let path = database.databasePath
        let id = UUID().uuidString
        // A result left by an earlier requester that gave up is of no use to anyone.
        _ = unlink(resultPath(path))
        do {
            try write(
                Request(id: id, dropUnreachableSlots: dropUnreachableSlots), to: requestPath(path), replacing: false)
        } catch let error as DBKeyError where error.errno == .fileExists {
            throw DBKeyError(
                .databaseInUse, "Another rotation request for \(path) is waiting for an answer: try again later.",
                path: path)
        } catch let error as DBKeyError where error.code == .keyChangePending {
            // In place, its directory not flushed: an app sees it all the same, and waiting
            // for its answer is the only way to say what became of it.
        }
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline && access(requestPath(path), F_OK) == 0 {
            if let outcome = try answer(to: id, path: path) { return try outcome(database) }
            try await Task.sleep(for: .milliseconds(20))
        }
        // Still there at the deadline: withdraw the request. If it is gone, an app claimed it.
        if ContinuousClock.now >= deadline, unlink(requestPath(path)) == 0 {
            throw DBKeyError(
                .databaseInUse,
                "No app answered the rotation request for \(path) within \(timeout): none holding it answers requests (ConnectionPool's answeringRotationRequests), or none is running. The request was withdrawn; nothing was changed.",
                path: path)
        }
        // Claimed: the answer is waited for within the same bound, and a claim that no live
        // process holds is reported at once.
        while true {
            if let outcome = try answer(to: id, path: path) { return try outcome(database) }
            switch claimState(path) {
            case .held:
                guard ContinuousClock.now < deadline + .milliseconds(200) else {
                    throw DBKeyError(
                        .keyChangePending,
                        "The app holding \(path) took the rotation request and is still carrying it out after \(timeout). It completes on its own (the rotation is journaled, and an interrupted one is settled by the next open): run dbkey status \(path) to see the key version.",
                        path: path)
                }
                try await Task.sleep(for: .milliseconds(20))
            case .none, .abandoned:
                if let outcome = try answer(to: id, path: path) { return try outcome(database) }
                _ = unlink(claimedPath(path))
                let untrusted =
                    access(resultPath(path), F_OK) == 0
                    ? " An answer is there that this requester does not trust (another user's file, or a link): run dbkey as the app's user, and remove \(resultPath(path)) if neither wrote it."
                    : ""
                throw DBKeyError(
                    .rotationInterrupted,
                    "The app that claimed the rotation request for \(path) stopped without answering (or could not write its answer). The next open settles whatever it left; run dbkey status to see the key version.\(untrusted)",
                    path: path)
            }
        }
    }

    /// The outcome written for request `id`, if it is there: removed, and turned into the
    /// rotated `.key` or the app's error.
    ///
    /// The app has answered by then: a failure to read its answer, or the rotated `.key`, is
    /// reported as ``DBKeyError/Code-swift.struct/keyChangePending`` — the rotation may have
    /// happened, and a plain failure would say it did not.
    private static func answer(to id: String, path: String) throws -> ((ManagedDatabase) throws -> KeyFile)? {
        guard access(resultPath(path), F_OK) == 0 else { return nil }
        func unread(_ what: String, _ error: any Error) -> DBKeyError {
            DBKeyError(
                .keyChangePending,
                "The app holding \(path) answered the rotation request, but \(what) failed (\((error as? DBKeyError)?.message ?? "\(type(of: error))")). The rotation is done or undone by the app, journaled: run dbkey status \(path) to see the key version.",
                path: path)
        }
        let result: Outcome
        do {
            result = try read(Outcome.self, from: resultPath(path), kind: "rotation result")
        } catch let error as DBKeyError
            where [.keyFileMissing, .keyFileInsecure, .keyFileCorrupt, .invalidConfiguration].contains(error.code)
        {
            // Gone, or not an answer this requester can trust (another user's file, a link, not
            // JSON): not its answer. The app's answer replaces it.
            return nil
        } catch {
            // Unread: withdrawn if no app has taken the request, so that nothing changes.
            if unlink(requestPath(path)) == 0 { throw error }
            throw unread("reading its answer", error)
        }
        guard result.id == id else { return nil }
        _ = unlink(resultPath(path))
        return { database in
            if result.status == .rotated {
                do {
                    return try database.keyStore.read()
                } catch {
                    throw unread("reading the rotated .key", error)
                }
            }
            let code = DBKeyError.Code(rawValue: result.code ?? DBKeyError.Code.io.rawValue)
            throw DBKeyError(
                code, "The app holding \(path) could not rotate it: \(result.message ?? "no reason given")", path: path)
        }
    }

    /// What a requester leaves for the app: `{"id": …, "drop_unreachable_slots": …}`.
    struct Request: Codable {
        var id: String?
        var dropUnreachableSlots: Bool?

        enum CodingKeys: String, CodingKey {
            case id
            case dropUnreachableSlots = "drop_unreachable_slots"
        }
    }

    /// What the app writes back: the request's id, and the new key version or the error.
    struct Outcome: Codable {
        enum Status: String, Codable {
            case rotated, failed
        }
        var id: String?
        var status: Status
        var dekVersion: Int?
        var code: String?
        var message: String?

        enum CodingKeys: String, CodingKey {
            case id, status, code, message
            case dekVersion = "dek_version"
        }
    }

    private static func read<Value: Decodable>(_ type: Value.Type, from path: String, kind: String) throws -> Value {
        let bytes = try ProtectedFile.read(at: path, maxSize: maxSize, kind: kind, missingCode: .keyFileMissing)
        guard let value = bytes.withUnsafeBytes({ try? JSONDecoder().decode(type, from: Data($0)) }) else {
            throw DBKeyError(.invalidConfiguration, "The \(kind) \(path) is not a JSON object of its form.", path: path)
        }
        return value
    }

    private static func write(_ value: some Encodable, to path: String, replacing: Bool = true) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let data = try encoder.encode(value)
        try data.withUnsafeBytes { try ProtectedFile.writeAtomically($0, to: path, replacing: replacing) }
    }
}
