#if canImport(Glibc)
    import Glibc
#endif
import SQLCipherKeyManager

/// The audit of another program (`dbkey`, the example app): it runs the program with the engine
/// arena preloaded, stops it at chosen moments (a line it prints, or the fault shim's
/// `stopbefore`) and copies its memory at each stop, then lets it go on. Once it has ended, each
/// copy is searched for the master key and for every data key the database's `.key` file held
/// before, at a stop (current and pending) or after: a rotation's new key is written to the
/// `.key` only once its copy is made, so a stop in the middle of the copy learns it only later.
struct ProcessAudit {
    var database: String
    var preload: [String] = []
    var stopLines: [String] = []
    var program: [String] = []

    /// One stop: why, the key versions the `.key` named then, and the copy of memory.
    struct Stop {
        let reason: String
        let version: Int?
        let pendingVersion: Int?
        let memory: MemoryScanner.Snapshot
    }

    func run() async throws -> String {
        guard let masterKeyPath = getenv(LocalKms.masterKeyFileVariable).map({ String(cString: $0) }) else {
            throw DBKeyError(
                .invalidConfiguration, "Set \(LocalKms.masterKeyFileVariable), as for the audited program.")
        }
        let masterKey = try Self.readMasterKey(at: masterKeyPath)
        let kms = try LocalKms(masterKey: masterKey)
        var dataKeys: [Int: SecureBuffer] = [:]
        /// Learns the keys the `.key` holds now; the versions, or nil when there is no `.key`.
        func learnKeys() async throws -> (version: Int, pending: Int?)? {
            let path = KeyFile.path(forDatabase: database)
            guard access(path, F_OK) == 0 else { return nil }
            let keyFile = try KeyFile.read(from: path)
            dataKeys[keyFile.version] = try await kms.decrypt(
                keyFile.encryptedDek, kekId: keyFile.kekId, context: keyFile.encryptionContext)
            if let pending = keyFile.pending {
                dataKeys[pending.version] = try await kms.decrypt(
                    pending.encryptedDek, kekId: pending.kekId, context: keyFile.encryptionContext)
            }
            return (keyFile.version, keyFile.pending?.version)
        }
        _ = try await learnKeys()
        let child = try ChildProcess(program, preload: preload)
        var stops: [Stop] = []
        func copyStopped(_ reason: String) async throws {
            let versions = try await learnKeys()
            stops.append(
                Stop(
                    reason: reason, version: versions?.version, pendingVersion: versions?.pending,
                    memory: MemoryScanner.Snapshot(of: child.pid)))
        }
        var remainingLines = stopLines
        var status: Int32?
        while status == nil {
            switch child.next() {
            case .line(let line):
                guard let index = remainingLines.firstIndex(of: line) else { continue }
                remainingLines.remove(at: index)
                guard child.stop() else { continue }
                try await copyStopped("line: \(line)")
                child.resume()
            case .stoppedItself:
                try await copyStopped("stopped itself")
                child.resume()
            case .exited(let exitStatus):
                status = exitStatus
            }
        }
        _ = try await learnKeys()
        let patterns =
            KeyPatterns.masked("master", masterKey, base64: true)
            + dataKeys.keys.sorted().flatMap { KeyPatterns.masked("dek_v\($0)", dataKeys[$0]!) }
        let stopEntries = stops.map { stop in
            "{\"reason\": \"\(stop.reason)\", \"version\": \(stop.version.map(String.init) ?? "null"), "
                + "\"pending_version\": \(stop.pendingVersion.map(String.init) ?? "null"), \"counts\": "
                + "\(Report.json(stop.memory.count(patterns), patterns))}"
        }
        return "{\"status\": \(status ?? -1), \"stops\": [\(stopEntries.joined(separator: ", "))]}"
    }

    private static func readMasterKey(at path: String) throws -> SecureBuffer {
        let text = try ProtectedFile.read(
            at: path, maxSize: 1024, kind: "master key file", missingCode: .keyFileMissing)
        let key = text.withUnsafeBytes { bytes in
            SecureBuffer.decodingBase64(UnsafeRawBufferPointer(rebasing: bytes.prefix { $0 != UInt8(ascii: "\n") }))
        }
        guard let key, key.count == 32 else {
            throw DBKeyError(.invalidConfiguration, "\(path) does not hold base64 of 32 bytes.")
        }
        return key
    }
}

/// A program run with its standard output on a pipe, whose lines are read, and whose stops are
/// seen (`waitpid` with `WUNTRACED`).
final class ChildProcess {
    enum Event {
        case line(String)
        case stoppedItself
        case exited(Int32)
    }

    let pid: pid_t
    private var output: Int32
    private var pending: [UInt8] = []
    private var lines: [String] = []
    /// The wait status of its end, once seen.
    private var finished: Int32?

    init(_ program: [String], preload: [String]) throws {
        var pipeEnds: [Int32] = [0, 0]
        guard !program.isEmpty, pipe(&pipeEnds) == 0 else {
            throw DBKeyError(.invalidConfiguration, "Nothing to run, or no pipe.")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], STDOUT_FILENO)
        posix_spawn_file_actions_addclose(&actions, pipeEnds[0])
        posix_spawn_file_actions_addclose(&actions, pipeEnds[1])
        var environment = Array(
            (0...).lazy.map { environ[$0] }.prefix { $0 != nil }.map { String(cString: $0!) }
                .filter { !$0.hasPrefix("LD_PRELOAD=") })
        if !preload.isEmpty {
            environment.append("LD_PRELOAD=" + preload.joined(separator: " "))
        }
        let argv = program.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, program[0], &actions, nil, argv, envp)
        close(pipeEnds[1])
        guard spawned == 0 else {
            close(pipeEnds[0])
            throw DBKeyError(
                .invalidConfiguration, "Could not run \(program[0]): \(String(cString: strerror(spawned))).")
        }
        self.pid = pid
        output = pipeEnds[0]
    }

    deinit {
        if output >= 0 { close(output) }
    }

    /// The next line the program printed, its next stop of its own, or its end. The lines are
    /// passed on to this program's standard error.
    func next() -> Event {
        while true {
            if !lines.isEmpty { return .line(lines.removeFirst()) }
            if output >= 0 {
                var poll = pollfd(fd: output, events: Int16(POLLIN), revents: 0)
                if Glibc.poll(&poll, 1, 20) > 0 {
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    let count = read(output, &buffer, buffer.count)
                    if count > 0 {
                        _ = buffer.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, count) }
                        split(buffer.prefix(count))
                        continue
                    }
                    close(output)
                    output = -1
                }
            }
            if let finished {
                if output < 0 { return .exited(Self.exitStatus(finished)) }
                continue
            }
            var status: Int32 = 0
            let changed = waitpid(pid, &status, WUNTRACED | (output >= 0 ? WNOHANG : 0))
            if changed == pid {
                if Self.isStop(status) { return .stoppedItself }
                finished = status
            }
        }
    }

    /// Stops the program and waits until it is stopped; `false` if it ended instead (its end is
    /// then reported by the next ``next()``).
    func stop() -> Bool {
        kill(pid, SIGSTOP)
        var status: Int32 = 0
        guard waitpid(pid, &status, WUNTRACED) == pid else { return false }
        if Self.isStop(status) { return true }
        finished = status
        return false
    }

    func resume() {
        kill(pid, SIGCONT)
    }

    /// `WIFSTOPPED`.
    private static func isStop(_ status: Int32) -> Bool { status & 0xFF == 0x7F }

    /// The exit status, or 128 + the signal that ended it.
    private static func exitStatus(_ status: Int32) -> Int32 {
        status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + status & 0x7F
    }

    private func split(_ bytes: ArraySlice<UInt8>) {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                lines.append(String(decoding: pending, as: UTF8.self))
                pending.removeAll()
            } else {
                pending.append(byte)
            }
        }
    }
}
