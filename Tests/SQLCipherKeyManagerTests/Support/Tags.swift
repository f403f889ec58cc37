import Testing

extension Tag {
    /// What depends on the linked SQLCipher — the file format, cipher settings, adoption,
    /// upgrade, page authentication, the SQL guard, opening and keying, and the kill and fault
    /// tests of every key-changing operation. Scripts/test runs every test on SQLCipher 4 and
    /// the suites with this tag on 3.4.1 as well.
    @Tag static var engine: Self
}
