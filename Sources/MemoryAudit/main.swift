// dbkey-memory-audit self DIRECTORY
// dbkey-memory-audit watch DATABASE [--preload LIBRARY]... [--stop-on-line TEXT]... -- PROGRAM [ARGUMENT]...
//
// Measures, instead of trusting, where key material lies in memory. Each match of a key (raw,
// lowercase hex, uppercase hex; a master key also as its base64) is counted by place: locked
// (DBKey's locked, dump-excluded pages), engine (memory SQLite or OpenSSL allocated, when the
// engine arena of Scripts/enginearena is preloaded) or elsewhere (a copy the program's own code
// made). Prints one JSON object.
//
// self: audits this process (SelfAudit): while a connection is open, and after everything is
// closed.
//
// watch: runs PROGRAM (dbkey, the example app) with the libraries given preloaded and audits it
// at each stop (ProcessAudit): when it prints a line given with --stop-on-line, and when it stops
// itself (the fault shim's stopbefore). The master key comes from DBKEY_MASTER_KEY_FILE, as for
// the program; the data keys from DATABASE's .key file at each stop.
import SQLCipherKeyManager

#if canImport(Glibc)
    import Glibc
#endif

func printError(_ text: String) {
    var line = text + "\n"
    _ = line.withUTF8 { write(STDERR_FILENO, $0.baseAddress, $0.count) }
}

func usage() -> Never {
    printError(
        "usage: dbkey-memory-audit self DIRECTORY | watch DATABASE [--preload LIBRARY]... "
            + "[--stop-on-line TEXT]... -- PROGRAM [ARGUMENT]...")
    exit(64)
}

var arguments = CommandLine.arguments.dropFirst()
do {
    switch arguments.popFirst() {
    case "self":
        guard let directory = arguments.popFirst() else { usage() }
        print(try await SelfAudit.run(in: directory))
    case "watch":
        guard let database = arguments.popFirst() else { usage() }
        var audit = ProcessAudit(database: database)
        while let argument = arguments.popFirst(), argument != "--" {
            switch (argument, arguments.popFirst()) {
            case ("--preload", let library?): audit.preload.append(library)
            case ("--stop-on-line", let line?): audit.stopLines.append(line)
            default: usage()
            }
        }
        audit.program = Array(arguments)
        print(try await audit.run())
    default:
        usage()
    }
} catch {
    printError("dbkey-memory-audit: \(error)")
    exit(1)
}
