//! tapwire-collector: receives mirrored traffic, decapsulates it, demultiplexes it per source
//! and per session, tracks loss and writes captures.
//!
//! The pure core is [`seq`] (sequence tracking), [`demux`] (the source table) and [`pipeline`]
//! (decapsulation plus accounting); [`capfile`], [`mapfile`] and [`offline`] are the shells that
//! touch files.

pub mod capfile;
pub mod check;
pub mod config;
pub mod control;
pub mod demux;
pub mod filter;
pub mod live;
pub mod mapfile;
pub mod offline;
pub mod pipeline;
pub mod seq;
pub mod timefmt;
