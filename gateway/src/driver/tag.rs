//! The 64 bits each driver hangs on what it hands the kernel (an io_uring operation's user
//! data, an epoll registration's data) to know what comes back: a kind (the top byte, each
//! driver's own), a slot (24 bits) and the slot's generation (the low 32 bits), so what comes
//! back for a slot that has since been reused is told apart.

/// Slots fit in 24 bits.
pub(super) const MAX_SLOTS: usize = 1 << 24;

/// The tag of `kind` for `slot` in its generation `gen`.
pub(super) fn pack(kind: u8, slot: usize, gen: u32) -> u64 {
    (kind as u64) << 56 | ((slot as u64) & 0xff_ffff) << 32 | gen as u64
}

/// The kind, slot and generation a tag names.
pub(super) fn unpack(data: u64) -> (u8, usize, u32) {
    ((data >> 56) as u8, ((data >> 32) & 0xff_ffff) as usize, data as u32)
}
