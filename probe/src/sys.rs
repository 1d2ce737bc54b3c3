//! The socket options the probe needs that neither netio nor socket2 offers: the path MTU of a
//! connected raw socket, and "never fragment". Integer options only, behind safe signatures.
#![allow(unsafe_code)]

use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd};

fn setsockopt_int(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is an initialised c_int that lives for the call; the kernel reads
    // `size_of::<c_int>()` bytes from it.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn getsockopt_int(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` has room for `len` bytes; the kernel writes at most `len` bytes and
    // updates `len`. Any bit pattern is a valid c_int.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// The path MTU the kernel knows for a **connected** socket's destination (`IP_MTU`,
/// `IPV6_MTU`): the route's MTU, lowered by any ICMP "packet too big" it has heard.
pub fn path_mtu(fd: &impl AsFd, v6: bool) -> io::Result<u32> {
    let mtu = if v6 {
        getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        getsockopt_int(fd, libc::IPPROTO_IP, libc::IP_MTU)
    }?;
    u32::try_from(mtu).map_err(|_| io::Error::other(format!("the kernel gave MTU {mtu}")))
}

/// Never fragment locally and set DF: a datagram over the path MTU fails with `EMSGSIZE`
/// (`IP_PMTUDISC_DO`, `IPV6_PMTUDISC_DO`).
pub fn never_fragment(fd: &impl AsFd, v6: bool) -> io::Result<()> {
    if v6 {
        setsockopt_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        setsockopt_int(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    }
}
