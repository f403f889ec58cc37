import Testing

extension Tag {
    /// What depends on the linked SQLCipher — the file format, cipher settings, adoption,
    /// upgrade, page authentication, the SQL guard, opening and keying, and the kill and fault
    /// tests of every key-changing operation. Scripts/test runs every test on SQLCipher 4 and
    /// the suites with this tag on 3.4.1 as well.
    @Tag static var engine: Self

    // The areas: each suite names the parts it tests, so that a run can be narrowed to one
    // (`DBKEY_TEST_TAG=aws Scripts/test`) and Scripts/test's summary counts by area. A test
    // with no area counts as core.

    /// The library: key files, key changes, recovery, slots, running apps, the local and mock
    /// providers.
    @Tag static var core: Self
    /// `dbkey`, the operator's tool, run as a process.
    @Tag static var cli: Self
    /// AWS KMS, against moto and boto3.
    @Tag static var aws: Self
    /// Vault Transit, against OpenBao.
    @Tag static var vault: Self
    /// PKCS#11, against SoftHSM2.
    @Tag static var pkcs11: Self
    /// Google Cloud KMS, against the fake Cloud KMS and Google's client.
    @Tag static var gcp: Self
    /// Azure Key Vault, against the fake Key Vault and Microsoft's client.
    @Tag static var azure: Self
    /// TPM 2.0, against swtpm.
    @Tag static var tpm: Self
}
