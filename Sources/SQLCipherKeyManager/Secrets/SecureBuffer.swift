import Foundation

/// Fixed-size memory for key material that is locked in RAM, kept out of core dumps and wiped
/// when released.
///
/// Every data key, master key and key text DBKey handles lives in a `SecureBuffer`. Its memory
/// is `mlock`ed so it is never written to swap and marked `MADV_DONTDUMP` so it never appears in
/// a core file: a slot of pages locked once and shared only by `SecureBuffer`s for a buffer of
/// up to a page, pages of its own for a larger one. `deinit` overwrites the whole slot or
/// allocation with `explicit_bzero`, which the compiler may not optimise away. The bytes are reachable only
/// inside ``withUnsafeBytes(_:)``, the description never shows them, and `==` compares in
/// constant time.
///
/// ```swift
/// let key = try SecureBuffer.random(count: 32)
/// let fingerprint = key.withUnsafeBytes { SHA256.hash(data: $0) }
/// ```
///
/// A buffer's bytes never change after it is initialised, which is why it can be shared between
/// tasks.
public final class SecureBuffer: @unchecked Sendable {
    /// The number of bytes held.
    public let count: Int

    /// Whether `mlock` succeeded, so that the pages cannot be swapped out.
    ///
    /// `mlock` can fail when the process's `RLIMIT_MEMLOCK` is exhausted; the buffer is still
    /// usable and still wiped on release, but its pages could reach swap.
    public let isMemoryLocked: Bool

    /// Whether `madvise(MADV_DONTDUMP)` succeeded, so that the pages are left out of core files.
    public let isExcludedFromCoreDumps: Bool

    private let base: UnsafeMutableRawPointer
    private let allocatedByteCount: Int
    /// Whether the memory is a slot of ``LockedMemoryPool``, which stays locked when returned.
    private let isPooled: Bool

    /// Creates a buffer of `count` bytes and lets `initializer` write all of them.
    ///
    /// The closure receives the whole buffer, zero-filled; whatever it does not write stays zero.
    /// If it throws, the memory is wiped and released before the error propagates.
    ///
    /// - Throws: Whatever `initializer` throws.
    public init(
        count: Int,
        initializingWith initializer: (UnsafeMutableRawBufferPointer) throws -> Void
    ) rethrows {
        precondition(count >= 0, "SecureBuffer needs a non-negative size")
        self.count = count
        if let slot = LockedMemoryPool.shared.allocate(count) {
            base = slot.base
            allocatedByteCount = slot.byteCount
            isPooled = true
            isMemoryLocked = slot.isMemoryLocked
            isExcludedFromCoreDumps = slot.isExcludedFromCoreDumps
        } else {
            let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
            // Whole pages of our own, so that mlock and madvise cover exactly this buffer and
            // no other allocation shares (or later inherits) its pages.
            allocatedByteCount = (count + pageSize - 1) / pageSize * pageSize
            base = UnsafeMutableRawPointer.allocate(byteCount: allocatedByteCount, alignment: pageSize)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: allocatedByteCount)
            isPooled = false
            isMemoryLocked = mlock(base, allocatedByteCount) == 0
            isExcludedFromCoreDumps = Platform.excludeFromCoreDumps(base, allocatedByteCount)
        }
        try initializer(UnsafeMutableRawBufferPointer(start: base, count: count))
    }

    /// Creates a buffer holding a copy of `bytes`.
    ///
    /// Use it to take key material out of a buffer that you then wipe yourself.
    public convenience init(copying bytes: UnsafeRawBufferPointer) {
        self.init(count: bytes.count) { destination in
            destination.copyMemory(from: bytes)
        }
    }

    /// Creates a buffer of `count` bytes from the operating system's random generator.
    ///
    /// - Throws: ``DBKeyError/Code-swift.struct/io`` if the kernel refuses to give entropy.
    public static func random(count: Int) throws -> SecureBuffer {
        try SecureBuffer(count: count) { buffer in
            var offset = 0
            while offset < buffer.count {
                // getentropy hands out at most 256 bytes per call.
                let chunk = min(256, buffer.count - offset)
                guard getentropy(buffer.baseAddress! + offset, chunk) == 0 else {
                    throw DBKeyError(.io, "The operating system refused to provide random bytes (getentropy).")
                }
                offset += chunk
            }
        }
    }

    deinit {
        Platform.secureZero(base, allocatedByteCount)
        if isPooled {
            LockedMemoryPool.shared.release(
                LockedMemoryPool.Slot(
                    base: base, byteCount: allocatedByteCount, isMemoryLocked: isMemoryLocked,
                    isExcludedFromCoreDumps: isExcludedFromCoreDumps))
            return
        }
        if isMemoryLocked {
            munlock(base, allocatedByteCount)
        }
        if isExcludedFromCoreDumps {
            Platform.includeInCoreDumps(base, allocatedByteCount)
        }
        base.deallocate()
    }

    /// Calls `body` with the secret bytes.
    ///
    /// The pointer is valid only during the call; do not copy the bytes into a `String`, `Data`
    /// or `Array`.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }
}

extension SecureBuffer: Equatable {
    /// Compares two buffers in time that depends only on their length, never on their contents.
    public static func == (lhs: SecureBuffer, rhs: SecureBuffer) -> Bool {
        guard lhs.count == rhs.count else { return false }
        return lhs.withUnsafeBytes { left in
            rhs.withUnsafeBytes { right in
                var difference: UInt8 = 0
                for index in 0..<left.count {
                    difference |= left[index] ^ right[index]
                }
                return difference == 0
            }
        }
    }
}

extension SecureBuffer: CustomStringConvertible, CustomDebugStringConvertible {
    /// A description that gives the size and never the bytes.
    public var description: String { "SecureBuffer(\(count) bytes, redacted)" }

    /// The same as ``description``: the bytes are never shown.
    public var debugDescription: String { description }
}
