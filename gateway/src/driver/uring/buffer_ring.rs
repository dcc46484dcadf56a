//! The shard's provided-buffer ring: receive buffers the kernel picks from when bytes arrive,
//! so an idle connection holds none.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};

use super::BUFFER_GROUP;

/// The shard's provided-buffer ring: `count` buffers of `size` bytes the kernel picks from.
pub(super) struct BufferRing {
    /// Page-aligned array of `count` ring entries, shared with the kernel.
    entries: *mut types::BufRingEntry,
    buffers: *mut u8,
    count: u16,
    size: usize,
    /// Local copy of the tail the kernel reads.
    tail: u16,
}

impl BufferRing {
    fn layouts(count: u16, size: usize) -> (std::alloc::Layout, std::alloc::Layout) {
        let entries = std::alloc::Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .expect("buffer ring layout");
        let buffers =
            std::alloc::Layout::from_size_align(count as usize * size, 4096).expect("buffer layout");
        (entries, buffers)
    }

    pub(super) fn new(ring: &IoUring, count: u16, size: usize) -> io::Result<Self> {
        assert!(count.is_power_of_two());
        let (el, bl) = Self::layouts(count, size);
        // SAFETY: both layouts have non-zero size; the memory is zeroed, which is a valid
        // `BufRingEntry` array.
        let (entries, buffers) =
            unsafe { (std::alloc::alloc_zeroed(el) as *mut types::BufRingEntry, std::alloc::alloc(bl)) };
        if entries.is_null() || buffers.is_null() {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "buffer ring allocation"));
        }
        let mut pool = Self { entries, buffers, count, size, tail: 0 };
        // SAFETY: `entries` is a page-aligned array of `count` entries that lives until `drop`,
        // which unregisters it first (or leaks it when the ring may still use it).
        let registered =
            unsafe { ring.submitter().register_buf_ring_with_flags(entries as u64, count, BUFFER_GROUP, 0) };
        if let Err(e) = registered {
            pool.free();
            return Err(e);
        }
        for bid in 0..count {
            pool.push(bid);
        }
        pool.publish();
        Ok(pool)
    }

    /// Puts buffer `bid` back in the ring (visible to the kernel after `publish`).
    pub(super) fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        // SAFETY: the index is masked into the array; the entry is ours to write because the
        // tail has not yet been published past it.
        let entry = unsafe { &mut *self.entries.add((self.tail & mask) as usize) };
        entry.set_addr(self.buffers as u64 + bid as u64 * self.size as u64);
        entry.set_len(self.size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes pushed buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, which the kernel
        // reads; an atomic release store orders the entry writes before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// The kernel handed `bid` to us (a completion named it) and it is not back in the ring.
    pub(super) unsafe fn buffer(&mut self, bid: u16, len: usize) -> &mut [u8] {
        // SAFETY: in bounds (bid < count, len <= size) and exclusively ours per the contract.
        unsafe {
            std::slice::from_raw_parts_mut(self.buffers.add(bid as usize * self.size), len.min(self.size))
        }
    }

    pub(super) fn free(&mut self) {
        let (el, bl) = Self::layouts(self.count, self.size);
        // SAFETY: allocated in `new` with these layouts and not freed before.
        unsafe {
            std::alloc::dealloc(self.entries as *mut u8, el);
            std::alloc::dealloc(self.buffers, bl);
        }
    }
}
