//! IO errors with context that keep the errno reachable.

use std::io;

/// An OS error plus what was being done. Not public: callers get an [`io::Error`] whose kind is
/// the cause's kind and whose message names the syscall and the interface.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {cause}")]
struct Context {
    what: String,
    // Not `#[source]`: the cause is already in the message, and a source would print it twice
    // in an anyhow chain.
    cause: io::Error,
}

/// Wraps `cause` with `what` (for example `setsockopt(PACKET_RX_RING) on eth1`).
pub(crate) fn context(cause: io::Error, what: impl Into<String>) -> io::Error {
    let kind = cause.kind();
    context_kind(kind, cause, what)
}

/// Like [`context`] with an explicit kind, for errnos whose std kind is uninformative.
pub(crate) fn context_kind(
    kind: io::ErrorKind,
    cause: io::Error,
    what: impl Into<String>,
) -> io::Error {
    io::Error::new(
        kind,
        Context {
            what: what.into(),
            cause,
        },
    )
}

/// The errno behind `err`, looking through the context this crate adds.
pub fn raw_os_error(err: &io::Error) -> Option<i32> {
    err.raw_os_error().or_else(|| {
        err.get_ref()?
            .downcast_ref::<Context>()?
            .cause
            .raw_os_error()
    })
}

/// True when `err` says the interface went down or disappeared (`ENETDOWN`, `ENXIO`, `ENODEV`):
/// the caller should report it, wait, and reopen.
pub fn is_interface_gone(err: &io::Error) -> bool {
    matches!(
        raw_os_error(err),
        Some(libc::ENETDOWN | libc::ENXIO | libc::ENODEV)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_survives_context() {
        let e = context(
            io::Error::from_raw_os_error(libc::ENETDOWN),
            "poll on veth0",
        );
        assert_eq!(raw_os_error(&e), Some(libc::ENETDOWN));
        assert!(is_interface_gone(&e));
        assert_eq!(e.kind(), io::ErrorKind::NetworkDown);
        let msg = e.to_string();
        assert!(msg.starts_with("poll on veth0: "), "{msg}");
        assert!(msg.contains("os error"), "{msg}");
    }

    #[test]
    fn other_errors_are_not_interface_gone() {
        let e = context(io::Error::from_raw_os_error(libc::ENOMEM), "mmap");
        assert!(!is_interface_gone(&e));
        assert!(!is_interface_gone(&io::Error::other("plain")));
        assert_eq!(raw_os_error(&io::Error::other("plain")), None);
    }
}
