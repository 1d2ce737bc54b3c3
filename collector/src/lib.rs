//! tapwire-collector: receives mirrored traffic, decapsulates it, demultiplexes it per source
//! and per session, tracks loss and writes captures.
//!
//! The pure core is [`seq`] (sequence tracking), [`demux`] (the source table), [`pipeline`]
//! (decapsulation plus accounting), [`router`] (which session a frame goes to, or why not),
//! [`config`] (the session TOML) and [`filter`] (tcpdump syntax on inner frames). The shells
//! are [`capfile`], [`mapfile`] and [`offline`] (files, `tapwire decap`), [`live`] (`tapwire
//! collect`: inputs, the engine, the disk thread, TAPs), [`query`] (packets by time range and
//! filter across rotated files, through their indexes) and [`http`] (the API).

pub mod capfile;
pub mod check;
pub mod collect;
pub mod config;
pub mod demux;
pub mod fds;
pub mod filter;
pub mod http;
pub mod live;
pub mod mapfile;
pub mod offline;
pub mod pipeline;
pub mod query;
pub mod router;
pub mod seq;
