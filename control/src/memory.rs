//! Memory freed in bulk, given back to the system.

/// Below this, what was freed is left to the allocator to reuse.
const WORTH_RETURNING: usize = 4 << 20;

/// `freed` bytes were let go at once (rooms and users gone quiet, forgotten): the allocator is
/// asked to return its free pages. glibc otherwise keeps them in the arenas of the threads that
/// freed them, and the process stays at its peak after the load that made it is gone.
pub(crate) fn released(freed: usize) {
    if freed < WORTH_RETURNING {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers; it only hands the allocator's own free pages back.
    unsafe {
        libc::malloc_trim(0);
    }
}
