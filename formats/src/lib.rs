//! tapwire-formats: the mirror encapsulations tapwire reads and writes, outer IP reassembly,
//! the decapsulation pipeline and capture-file encoding.
//!
//! Everything here is sans-IO: bytes and a caller-supplied time in, values out. No sockets,
//! clocks, threads or files; the collector and the probe wrap it.

#![warn(missing_docs)]

pub mod capture;
pub mod decap;
pub mod defrag;
pub mod encap;
pub mod index;
pub mod wire;
