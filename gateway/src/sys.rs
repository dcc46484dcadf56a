//! The few system calls the gateway makes outside its drivers' own (the inbox's wake-up, CPU
//! affinity, a closed socket's shutdown both drivers make), wrapped safely so that the rest of
//! the gateway has no `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Stops sending on a socket: the peer reads the end of the stream once what was written is
/// read (both drivers, before a closed socket lingers).
pub fn shutdown_write(fd: &OwnedFd) {
    // SAFETY: plain shutdown(2) on a descriptor we own.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

/// A non-blocking eventfd: the inbox's wake-up.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter. A full counter (EAGAIN) still leaves it readable, which is
/// all a wake-up needs, so the result is ignored.
pub fn eventfd_signal(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to a descriptor we own.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Resets an eventfd's counter (non-blocking; nothing to read is fine).
pub fn eventfd_clear(fd: &OwnedFd) {
    let mut counter: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64 from a descriptor we own.
    unsafe { libc::read(fd.as_raw_fd(), (&mut counter as *mut u64).cast(), 8) };
}

/// Whether a descriptor is readable right now.
pub fn is_readable(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// The CPUs this process may run on (its affinity: `taskset`, a cpuset, a container's
/// limits), in order; all of them when that cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it, and
    // CPU_ISSET reads within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> =
                (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Pins the calling thread to one CPU; a failure is told, with the reason.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("CPU {cpu} is past CPU_SETSIZE")));
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET stays within it for cpu < CPU_SETSIZE.
    let failed = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
    };
    if failed {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
