// swift-tools-version:6.1
// DBKey under GRDB: a GRDB DatabasePool keyed by DBKey and kept right across every key change.
//
// GRDB 7.10.0 comes from Scripts/grdb (run by Scripts/test), which prepares its released source
// to link the same SQLCipher as DBKey, in the repository's ignored .deps/ folder.
import Foundation
import PackageDescription

let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
// A path dependency's identity is its folder's name, whatever the clone is called.
let dbkey = repository.lastPathComponent
let grdb =
    ProcessInfo.processInfo.environment["DBKEY_GRDB_PATH"]
    ?? repository.appendingPathComponent(".deps/GRDB.swift-7.10.0-sqlcipher").path
let grdbIdentity = URL(fileURLWithPath: grdb).lastPathComponent

let package = Package(
    name: "DBKeyGRDB",
    platforms: [.macOS(.v15), .iOS(.v18)],
    products: [
        .library(name: "DBKeyGRDB", targets: ["DBKeyGRDB"])
    ],
    dependencies: [
        .package(path: repository.path),
        .package(path: grdb),
    ],
    targets: [
        .target(
            name: "DBKeyGRDB",
            dependencies: [
                .product(name: "SQLCipherKeyManager", package: dbkey),
                .product(name: "GRDB", package: grdbIdentity),
            ]
        ),
        .executableTarget(
            name: "dbkey-grdb-example-app",
            dependencies: ["DBKeyGRDB"],
            path: "Sources/GRDBExampleApp"
        ),
        .executableTarget(
            name: "dbkey-grdb-bench",
            dependencies: [
                "DBKeyGRDB",
                .product(name: "DBKeyBenchmarkSupport", package: dbkey),
                .product(name: "SQLCipherKeyManager", package: dbkey),
                .product(name: "GRDB", package: grdbIdentity),
            ],
            path: "Sources/GRDBBenchmarks"
        ),
        .testTarget(
            name: "DBKeyGRDBTests",
            dependencies: [
                "DBKeyGRDB", "dbkey-grdb-example-app",
                .product(name: "SQLCipherKeyManager", package: dbkey),
                .product(name: "GRDB", package: grdbIdentity),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
