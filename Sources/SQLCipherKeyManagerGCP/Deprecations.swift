// The names this release replaced, kept for one release (see CHANGELOG.md).

@available(*, deprecated, renamed: "GoogleCloudKms")
public typealias CloudKms = GoogleCloudKms
