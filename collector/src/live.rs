//! The parts of `tapwire collect` (put together in [`crate::collect`]): threads that hand
//! batches and buffers over by ownership.
//!
//! - [`input`]: one thread per input, filling receive batches; [`coverage`]: what the socket
//!   inputs leave to an input that reads the same packets below the IP stack; [`select`]:
//!   which input reads each interface holding a listen address (`--input`).
//! - [`engine`]: the one thread that owns the pipeline, the sessions and their outputs; routes
//!   each frame with [`crate::router`].
//! - [`output`], [`rates`], [`traffic`]: a session's file output, rates and traffic mix, as
//!   the engine keeps them.
//! - [`io`]: the disk thread; [`tap`]: a session's monitor TAP; [`stream`]: a session's live
//!   streams (the engine's half).
//! - [`control_plane`]: the engine as the control plane sees it; [`catalog`]: the catalog of
//!   capture files in the control plane's store (with `--db`).

pub mod catalog;
pub mod control_plane;
pub mod coverage;
pub mod engine;
pub mod input;
pub mod io;
pub mod output;
pub mod rates;
pub mod select;
pub mod stream;
pub mod tap;
pub mod traffic;
