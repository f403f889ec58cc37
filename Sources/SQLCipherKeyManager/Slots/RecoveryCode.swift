/// The escrow private key as text a person can write down and type back: 52 Crockford base32
/// symbols (256 bits, the last symbol's four low bits zero) in 13 groups of four, each group
/// followed by a check symbol — the group's 20-bit value mod 37, written with Crockford's check
/// alphabet (`0`–`Z`, then `*~$=U`). 37 is prime and exceeds every symbol's weight, so any one
/// mistyped symbol, and any two neighbours swapped, changes the check.
///
/// Reading is forgiving where Crockford is: case is ignored, `O` reads as `0`, `I` and `L` as
/// `1`, and dashes and spaces are skipped.
enum RecoveryCode {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ*~$=U".utf8)
    static let groupCount = 13
    static let symbolsPerGroup = 4

    static func encode(_ key: SecureBuffer) -> SecureBuffer {
        // 13 groups of five symbols and 12 dashes.
        SecureBuffer(count: groupCount * (symbolsPerGroup + 1) + groupCount - 1) { output in
            key.withUnsafeBytes { bytes in
                var position = 0
                for group in 0..<groupCount {
                    var value = 0
                    for index in 0..<symbolsPerGroup {
                        let symbol = symbolValue(bytes, at: group * symbolsPerGroup + index)
                        value = value << 5 | symbol
                        output[position] = alphabet[symbol]
                        position += 1
                    }
                    output[position] = alphabet[value % 37]
                    position += 1
                    if group < groupCount - 1 {
                        output[position] = UInt8(ascii: "-")
                        position += 1
                    }
                }
            }
        }
    }

    /// The 5-bit symbol at `index` of the key's bits (zero past its end).
    private static func symbolValue(_ bytes: UnsafeRawBufferPointer, at index: Int) -> Int {
        var value = 0
        for bit in (index * 5)..<(index * 5 + 5) {
            let byte = bit / 8
            let set = byte < bytes.count && bytes[byte] & (0x80 >> UInt8(bit % 8)) != 0
            value = value << 1 | (set ? 1 : 0)
        }
        return value
    }

    static func decode(_ text: SecureBuffer) throws -> SecureBuffer {
        let symbolCount = groupCount * (symbolsPerGroup + 1)
        var count = 0
        let symbols = try text.withUnsafeBytes { input in
            try SecureBuffer(count: symbolCount) { output in
                for byte in input {
                    if byte == UInt8(ascii: "-") || byte == UInt8(ascii: " ") || byte == 0x0A || byte == 0x0D
                        || byte == 0x09
                    {
                        continue
                    }
                    guard let value = value(of: byte) else {
                        throw DBKeyError(
                            .invalidConfiguration,
                            "The recovery code holds a character that is not one of its symbols (0-9, A-Z without I, L, O, U, and *~$=U as checks). Type it again."
                        )
                    }
                    if count < symbolCount { output[count] = UInt8(value) }
                    count += 1
                }
            }
        }
        guard count == symbolCount else {
            throw DBKeyError(
                .invalidConfiguration,
                "A recovery code has \(symbolCount) symbols in \(groupCount) groups of five; this one has \(count). Type it again."
            )
        }
        return try symbols.withUnsafeBytes { symbols in
            for group in 0..<groupCount {
                var value = 0
                for index in 0..<symbolsPerGroup {
                    let symbol = Int(symbols[group * 5 + index])
                    guard symbol < 32 else { throw mistyped(group) }
                    value = value << 5 | symbol
                }
                guard Int(symbols[group * 5 + 4]) == value % 37 else { throw mistyped(group) }
            }
            // The last symbol carries one bit of the key: the other four are zero.
            guard symbols[(groupCount - 1) * 5 + symbolsPerGroup - 1] & 0x0F == 0 else {
                throw mistyped(groupCount - 1)
            }
            return SecureBuffer(count: EscrowSeal.keyByteCount) { key in
                for bit in 0..<(EscrowSeal.keyByteCount * 8) {
                    let symbolIndex = bit / 5
                    let symbol = symbols[symbolIndex / symbolsPerGroup * 5 + symbolIndex % symbolsPerGroup]
                    if symbol & (0x10 >> UInt8(bit % 5)) != 0 {
                        key[bit / 8] |= 0x80 >> UInt8(bit % 8)
                    }
                }
            }
        }
    }

    private static func mistyped(_ group: Int) -> DBKeyError {
        DBKeyError(
            .invalidConfiguration,
            "Group \(group + 1) of the recovery code fails its check symbol: a character in it was mistyped. Type that group again."
        )
    }

    /// A symbol's value: Crockford's reading, case-insensitive, with its check symbols.
    private static func value(of byte: UInt8) -> Int? {
        var upper = byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") ? byte - 32 : byte
        switch upper {
        case UInt8(ascii: "O"): upper = UInt8(ascii: "0")
        case UInt8(ascii: "I"), UInt8(ascii: "L"): upper = UInt8(ascii: "1")
        default: break
        }
        return alphabet.firstIndex(of: upper)
    }
}
