// The names this release replaced, kept for one release (see CHANGELOG.md).

@available(*, deprecated, renamed: "AWSKms")
public typealias AwsKms = AWSKms
