import Foundation
import Synchronization

/// Locked, undumpable memory for small secrets, taken from pages locked once instead of an
/// `mlock` and `munlock` for each buffer (together a quarter of an open's time).
///
/// Pages come in chunks of 16, each `mlock`ed and marked `MADV_DONTDUMP` when it is first
/// needed and kept for the life of the process; a page is cut into slots of one size (64 bytes
/// to a page), and only ``SecureBuffer``s ever share it. A slot is wiped by its buffer before it
/// returns to the pool, so the pool holds no secret that is not in use.
final class LockedMemoryPool: Sendable {
    static let shared = LockedMemoryPool()

    /// The slot sizes; a larger secret gets pages of its own.
    static let slotSizes = [64, 128, 256, 512, 1024, 2048, 4096]
    static let pagesPerChunk = 16

    /// A slot: where it is, its size, and what the system granted for its page.
    struct Slot: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let byteCount: Int
        let isMemoryLocked: Bool
        let isExcludedFromCoreDumps: Bool
    }

    private struct State: ~Copyable {
        var free: [[Slot]] = Array(repeating: [], count: LockedMemoryPool.slotSizes.count)
        var unusedPages: [Slot] = []
    }

    private let state = Mutex(State())
    private let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// A zero-filled slot of at least `count` bytes, or `nil` when `count` is larger than a slot.
    func allocate(_ count: Int) -> Slot? {
        guard let sizeClass = LockedMemoryPool.slotSizes.firstIndex(where: { $0 >= count }),
            LockedMemoryPool.slotSizes[sizeClass] <= pageSize
        else { return nil }
        return state.withLock { state in
            if let slot = state.free[sizeClass].popLast() { return slot }
            let page = state.unusedPages.popLast() ?? newChunk(into: &state.unusedPages)
            let size = LockedMemoryPool.slotSizes[sizeClass]
            let slots = stride(from: 0, to: pageSize, by: size).map {
                Slot(
                    base: page.base + $0, byteCount: size, isMemoryLocked: page.isMemoryLocked,
                    isExcludedFromCoreDumps: page.isExcludedFromCoreDumps)
            }
            state.free[sizeClass].append(contentsOf: slots.dropFirst().reversed())
            return slots[0]
        }
    }

    /// Takes back a slot its buffer has wiped.
    func release(_ slot: Slot) {
        guard let sizeClass = LockedMemoryPool.slotSizes.firstIndex(of: slot.byteCount) else { return }
        state.withLock { $0.free[sizeClass].append(slot) }
    }

    /// Locks a new chunk of pages, keeps all but one as unused, and returns that one.
    private func newChunk(into unused: inout [Slot]) -> Slot {
        let byteCount = pageSize * LockedMemoryPool.pagesPerChunk
        let base = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: pageSize)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        let locked = mlock(base, byteCount) == 0
        let excluded = Platform.excludeFromCoreDumps(base, byteCount)
        let pages = (0..<LockedMemoryPool.pagesPerChunk).map {
            Slot(
                base: base + $0 * pageSize, byteCount: pageSize, isMemoryLocked: locked,
                isExcludedFromCoreDumps: excluded)
        }
        unused.append(contentsOf: pages.dropFirst())
        return pages[0]
    }
}
