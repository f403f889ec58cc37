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
        // SQLCipher's C API (sqlite3_open_v2, with sqlite3_key declared), for an app that opens
        // its own handles and keys them through DatabaseKey.apply(to:).
        .library(name: "CSQLCipher", targets: ["CSQLCipher"]),
        // The benchmarks' measuring and workloads, for the integration packages' benchmarks.
        .library(name: "DBKeyBenchmarkSupport", targets: ["BenchmarkSupport"]),
        .library(name: "SQLCipherKeyManagerTesting", targets: ["SQLCipherKeyManagerTesting"]),
        .library(name: "SQLCipherKeyManagerConformance", targets: ["SQLCipherKeyManagerConformance"]),
        .library(name: "SQLCipherKeyManagerAWS", targets: ["SQLCipherKeyManagerAWS"]),
        .library(name: "SQLCipherKeyManagerVault", targets: ["SQLCipherKeyManagerVault"]),
        .library(name: "SQLCipherKeyManagerPKCS11", targets: ["SQLCipherKeyManagerPKCS11"]),
        .library(name: "SQLCipherKeyManagerGCP", targets: ["SQLCipherKeyManagerGCP"]),
        .library(name: "SQLCipherKeyManagerAzure", targets: ["SQLCipherKeyManagerAzure"]),
        .library(name: "SQLCipherKeyManagerTPM", targets: ["SQLCipherKeyManagerTPM"]),
        .library(name: "SQLCipherKeyManagerConfiguration", targets: ["SQLCipherKeyManagerConfiguration"]),
        .executable(name: "dbkey", targets: ["dbkey"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.7.0"),
        // PEM for escrow public keys; swift-crypto already depends on it.
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.0.0"),
        // Provider configuration from an app's own sources (SQLCipherKeyManagerConfiguration
        // only); no trait: the environment and in-memory providers need none.
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.0.0", traits: []),
    ],
    targets: [
        .systemLibrary(
            name: "CSQLCipher",
            pkgConfig: "sqlcipher",
            providers: [.apt(["libsqlcipher-dev"])]
        ),
        // OpenSSL's libcrypto, which SQLCipher itself links: AES and HMAC for re-encrypting pages.
        // No pkgConfig: SwiftPM would add libcrypto.pc's -L (the system library folder) to the
        // link line, where the system's SQLCipher 3.4.1 would shadow the 4.6.1 build.
        .systemLibrary(
            name: "COpenSSL",
            providers: [.apt(["libssl-dev"])]
        ),
        // The TPM2 Software Stack (ESAPI, marshaling, the TCTI loader), only for the TPM provider.
        .systemLibrary(
            name: "CTSS2",
            providers: [.apt(["libtss2-dev"])]
        ),
        .systemLibrary(
            name: "CPKCS11",
            providers: [.apt(["libp11-kit-dev"])]
        ),
        // The core: manager, .key file, SQLCipher layer, the local provider. Names no cloud.
        .target(
            name: "SQLCipherKeyManager",
            dependencies: [
                "CSQLCipher",
                "COpenSSL",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // One HTTP call path for the HTTP providers (not a product).
        .target(
            name: "KmsHTTP",
            dependencies: ["SQLCipherKeyManager", .product(name: "Logging", package: "swift-log")],
            swiftSettings: upcomingFeatures
        ),
        // Optional providers, each its own product so that an app links only what it uses.
        .target(
            name: "SQLCipherKeyManagerAWS",
            dependencies: [
                "SQLCipherKeyManager",
                "KmsHTTP",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerVault",
            dependencies: ["SQLCipherKeyManager", "KmsHTTP", .product(name: "Logging", package: "swift-log")],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerConfiguration",
            dependencies: [
                "SQLCipherKeyManager",
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerGCP",
            dependencies: [
                "SQLCipherKeyManager",
                "KmsHTTP",
                .product(name: "Crypto", package: "swift-crypto"),
                // RSA signatures (RS256) for a service account's token request.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerAzure",
            dependencies: [
                "SQLCipherKeyManager",
                "KmsHTTP",
                // A client certificate's key and certificates (PEM, PKCS #12) and its RS256 signatures.
                "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerTPM",
            dependencies: [
                "SQLCipherKeyManager",
                "CTSS2",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "SQLCipherKeyManagerPKCS11",
            dependencies: [
                "SQLCipherKeyManager",
                "CPKCS11",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: upcomingFeatures
        ),
        // The provider conformance suite, for anyone's provider. It imports Swift Testing, so it
        // is a product of its own: MockKms's product and the tools must not link it.
        .target(
            name: "SQLCipherKeyManagerConformance",
            dependencies: ["SQLCipherKeyManager"],
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
        // The command line as a library, so that a build of dbkey can bring its own providers.
        .target(
            name: "DBKeyCLI",
            dependencies: [
                "SQLCipherKeyManager",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "dbkey",
            dependencies: [
                "DBKeyCLI",
                "SQLCipherKeyManager",
                "SQLCipherKeyManagerAWS",
                "SQLCipherKeyManagerVault",
                "SQLCipherKeyManagerPKCS11",
                "SQLCipherKeyManagerGCP",
                "SQLCipherKeyManagerAzure",
                "SQLCipherKeyManagerTPM",
            ],
            swiftSettings: upcomingFeatures
        ),
        .target(
            name: "BenchmarkSupport",
            dependencies: [
                "SQLCipherKeyManager", "CSQLCipher", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "dbkey-bench",
            dependencies: [
                "BenchmarkSupport",
                "SQLCipherKeyManager",
                .product(name: "Crypto", package: "swift-crypto"),
                // AES-CBC, only to measure swift-crypto against the OpenSSL EVP rotation uses.
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                "SQLCipherKeyManagerAWS",
                "CSQLCipher",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Benchmarks",
            swiftSettings: upcomingFeatures
        ),
        .executableTarget(
            name: "dbkey-example-app",
            dependencies: ["SQLCipherKeyManager", .product(name: "Logging", package: "swift-log")],
            path: "Sources/ExampleApp",
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
                "SQLCipherKeyManagerConformance",
                "SQLCipherKeyManagerAWS",
                "SQLCipherKeyManagerVault",
                "SQLCipherKeyManagerPKCS11",
                "SQLCipherKeyManagerGCP",
                "SQLCipherKeyManagerAzure",
                "SQLCipherKeyManagerTPM",
                "SQLCipherKeyManagerConfiguration",
                "KmsHTTP",
                "DBKeyCLI",
                "CSQLCipher",
                "dbkey",
                "dbkey-memory-audit",
                "dbkey-example-app",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Configuration", package: "swift-configuration"),
            ],
            swiftSettings: upcomingFeatures
        ),
    ]
)
