//! The few system calls the roles and tools make beyond the standard library, each behind a safe
//! function: the only unsafe code of this crate and of the crates that use it for these.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

/// This process's open-file limits: (soft, hard).
pub fn open_files_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some((limit.rlim_cur, limit.rlim_max))
}

/// Sockets are files: raise the soft open-file limit to the hard one.
pub fn raise_open_files_limit() -> io::Result<()> {
    let Some((soft, hard)) = open_files_limit() else { return Err(io::Error::last_os_error()) };
    if soft >= hard {
        return Ok(());
    }
    let limit = libc::rlimit { rlim_cur: hard, rlim_max: hard };
    // SAFETY: setrlimit reads the live struct it is given.
    match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The ticks per second /proc counts CPU times in.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointers.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// The size of a memory page, in bytes (what /proc's page counts are in).
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system; it takes no pointers.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    }
}

/// CPU time of the calling thread, in seconds.
pub fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the live timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Sends `signal` to the process `pid` (kill(2)).
pub fn signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill takes no pointers; a pid that is gone gives ESRCH.
    match unsafe { libc::kill(pid, signal) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Lets the kernel pick a bound socket's port at connect time, per destination, rather than at
/// bind time (`IP_BIND_ADDRESS_NO_PORT`): many connections from one source address.
pub fn bind_address_no_port(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads a live c_int of the size it is given; a bad fd gives EBADF.
    let done = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Asks the allocator to hand its free pages back to the system: glibc otherwise keeps them in
/// the arenas of the threads that freed them, and a process stays at its peak after the load that
/// made it is gone.
pub fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only hands the allocator's own free pages back.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limits_read_and_raise() {
        let (soft, hard) = open_files_limit().expect("getrlimit");
        assert!(soft <= hard);
        raise_open_files_limit().unwrap();
        assert_eq!(open_files_limit().unwrap(), (hard, hard));
    }

    #[test]
    fn constants_of_the_system_are_sane() {
        assert!(clock_ticks() >= 1.0 && page_size() >= 4096);
        assert!(thread_cpu_secs() > 0.0);
    }

    #[test]
    fn a_signal_to_no_process_is_an_error() {
        assert!(signal(0, 0).is_ok(), "signal 0 to our own group only checks it exists");
        assert!(signal(u32::MAX, libc::SIGTERM).is_err());
    }

    #[test]
    fn a_bad_descriptor_is_an_error_and_a_socket_is_not() {
        use std::os::fd::AsRawFd;
        assert!(bind_address_no_port(-1).is_err());
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        bind_address_no_port(socket.as_raw_fd()).unwrap();
    }
}
