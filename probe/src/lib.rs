//! `tapwire-probe`: captures selected traffic of a host's interfaces and ships it, ERSPAN II,
//! ERSPAN III or GRE-TEB encapsulated, to a collector.
//!
//! A **flow** ([`tapwire_api_types::probe::FlowSpec`]) is one capture rule: an interface, a
//! direction, VLANs, a tcpdump filter, snaplen, 1-in-N sampling, a rate limit, and where to
//! send (collector, encapsulation, session id). Each flow has its own capture threads:
//!
//! ```text
//!  NIC ─► AF_PACKET TPACKET_V3 ring ─► Pipeline ─────────────────────► raw GRE socket ─► collector
//!         (kernel BPF: direction,      (direction/VLAN, 1-in-N,          (connected, DF,
//!          own tunnels excluded,        token bucket, sequence,           sendmmsg of
//!          user filter, snaplen)        ERSPAN/GRE header)                header + frame)
//! ```
//!
//! The pure core is [`config`] (flows from TOML or flags, checked), [`filter`] (the kernel
//! program, built from libpcap output and tested with an interpreter), [`sample`], [`bucket`]
//! (time passed in), [`seq`], [`select`] and [`pipeline`] (packets to datagram slices, tested
//! by decapsulating with the collector's own decoder). The shells are [`send`] (the socket),
//! [`worker`] (a capture thread: ring, retries, interface loss), [`manager`] (flows started and
//! stopped one by one), [`api`] (HTTP stats), [`privs`] (capabilities).

pub mod api;
pub mod bucket;
pub mod config;
pub mod filter;
pub mod frame;
pub mod link;
pub mod manager;
pub mod path;
pub mod pipeline;
pub mod privs;
pub mod route;
pub mod sample;
pub mod select;
pub mod send;
pub mod send_fast;
pub mod send_path;
pub mod seq;
pub mod stats;
mod sys;
pub mod worker;
