// swift-tools-version:6.1
import PackageDescription

let upcomingFeatures: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "DBKey",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SQLCipherKeyManager", targets: ["SQLCipherKeyManager"]),
        .library(name: "SQLCipherKeyManagerTesting", targets: ["SQLCipherKeyManagerTesting"]),
        .executable(name: "dbkey", targets: ["dbkey"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.7.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CSQLCipher",
            pkgConfig: "sqlcipher",
            providers: [.apt(["libsqlcipher-dev"])]
        ),
        .systemLibrary(
            name: "CPKCS11",
            providers: [.apt(["libp11-kit-dev"])]
        ),
        .target(
            name: "SQLCipherKeyManager",
            dependencies: [
                "CSQLCipher",
                "CPKCS11",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerTesting",
            dependencies: [
                "SQLCipherKeyManager",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "dbkey",
            dependencies: [
                "SQLCipherKeyManager",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "dbkey-bench",
            dependencies: [
                "SQLCipherKeyManager",
                "CSQLCipher",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Benchmarks",
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "dbkey-memory-audit",
            dependencies: ["SQLCipherKeyManager", "SQLCipherKeyManagerTesting"],
            path: "Sources/MemoryAudit",
            swiftSettings: upcomingFeatures
        ),
        .testTarget(
            name: "SQLCipherKeyManagerTests",
            dependencies: [
                "SQLCipherKeyManager",
                "SQLCipherKeyManagerTesting",
                "CSQLCipher",
                "dbkey",
                "dbkey-memory-audit",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
    ]
)
