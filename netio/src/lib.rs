//! tapwire's Linux IO shells: the AF_PACKET TPACKET_V3 capture ring, the TPACKET_V2 transmit
//! ring ([`tx`]), classic BPF attach, batched datagram IO (`recvmmsg`/`sendmmsg`) for raw GRE and
//! UDP sockets, the XDP steering program ([`xdp`]) with its AF_XDP sockets ([`xsk`]), and command
//! output that ends quietly on a closed pipe ([`stdout`], [`outln!`]).
//!
//! Everything here is a thin layer over `libc`; the parsing of kernel-shared memory and socket
//! metadata is plain safe code over byte slices so that it is tested without a kernel.
//!
//! # Invariants
//!
//! - **Nothing unfiltered is ever queued.** [`ring::Ring::open`] creates the socket with
//!   protocol 0 (the kernel delivers nothing to it), attaches a drop-all filter, sets up the
//!   ring, binds, joins the fanout group, and only then swaps in the caller's filter (or removes
//!   the drop-all one). `SO_ATTACH_FILTER` replaces a filter atomically, so the first packet in
//!   the ring has already passed the caller's filter and the fanout group never sees a packet
//!   twice. A filter attached later with [`ring::Ring::attach_filter`] applies from that moment:
//!   blocks the kernel already filled were filtered by the previous program.
//! - **Kernel-written offsets are never trusted.** Every offset and length in a block
//!   descriptor or `tpacket3_hdr` (`offset_to_first_pkt`, `blk_len`, `tp_next_offset`,
//!   `tp_mac`, `tp_snaplen`) is checked against the block before it is used. A header that does
//!   not fit ends the block early; the ring counts it in [`ring::RingStats::n_corrupt_blocks`]
//!   and goes on with the next block.
//! - **Counters are monotonic.** The kernel resets `PACKET_STATISTICS` on every read;
//!   [`ring::Ring::stats`] adds each read to running 64-bit totals.
//! - **Teardown is unconditional.** A [`ring::Ring`] unmaps its ring and then closes its socket
//!   on drop whatever state the interface is in; the kernel drops the promiscuous membership and
//!   the fanout membership with the socket.
//! - **Errors say what failed.** IO errors carry the syscall and the interface in their message
//!   and keep their [`std::io::ErrorKind`]; [`raw_os_error`] and [`is_interface_gone`] see the
//!   errno through the added context.
//! - Callers never see raw pointers: buffers are slices, addresses are [`std::net::SocketAddr`],
//!   sockets are anything [`std::os::fd::AsFd`].
//!
//! # Testing
//!
//! Block parsing, VLAN re-insertion, address and control-message decoding are unit-tested on
//! byte arrays. The integration tests (`tests/`) need root: each makes its own network
//! namespace and veth pair, runs socket setup inside it on a thread that called
//! `setns(CLONE_NEWNET)` (sockets keep their namespace when handed back to the test thread),
//! and deletes the namespace in a `Drop` guard. Without root they print why and skip.

#![warn(missing_docs)]

pub mod batch;
pub mod bpf;
mod error;
pub mod ring;
pub mod stdout;
mod sys;
pub mod tx;
pub mod xdp;
pub mod xsk;

pub use error::{is_interface_gone, raw_os_error};
pub use ring::page_size_bytes;
pub use socket2;
pub use sys::{close_inherited_fds, ifindex, mtu, release_free_heap, write_dontcache};
