import Testing

extension Tag {
    /// The GRDB integration: the area Scripts/test's summary counts these tests under, and
    /// the one `DBKEY_TEST_TAG=grdb Scripts/test` narrows a run to.
    @Tag static var grdb: Self
}
