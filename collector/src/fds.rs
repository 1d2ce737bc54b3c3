//! The process's file descriptors, shared out: capture files and inputs first, the API's
//! connections never more than a quarter. Whatever `RLIMIT_NOFILE` is, the API cannot take
//! what the capture needs (a flood of idle connections once left sessions unable to open
//! their files: EMFILE).

/// Descriptors kept for everything that is neither a capture file nor an API connection:
/// input sockets and rings, TAPs, the database, on-finish commands' pipes, the runtime.
pub const RESERVED: u64 = 256;
/// The API's connections at most, however high the limit.
pub const MAX_API_CONNECTIONS: usize = 1024;
/// Capture files kept open at most (beyond, files are closed and reopened as needed).
pub const MAX_CAPTURE_FILES: usize = 16_384;

/// The soft descriptor limit now (1024 when it cannot be read).
pub fn limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft)
}

/// Connections the API may hold: a quarter of the limit, at most [`MAX_API_CONNECTIONS`].
pub fn api_connections(limit: u64) -> usize {
    ((limit / 4) as usize).clamp(1, MAX_API_CONNECTIONS)
}

/// Capture files the disk thread may keep open: the limit less [`RESERVED`] and the API's
/// share, between 16 and [`MAX_CAPTURE_FILES`].
pub fn capture_files(limit: u64) -> usize {
    let api = api_connections(limit) as u64;
    (limit.saturating_sub(RESERVED + api) as usize).clamp(16, MAX_CAPTURE_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_never_takes_what_capture_files_and_inputs_need() {
        for limit in [64, 512, 1024, 2048, 20_000, 1 << 20] {
            let api = api_connections(limit) as u64;
            let files = capture_files(limit) as u64;
            assert!(api <= limit / 4, "{limit}: api {api}");
            if limit >= 1024 {
                assert!(api + files + RESERVED <= limit, "{limit}: {api} + {files}");
            }
        }
        assert_eq!(api_connections(512), 128);
        assert_eq!(api_connections(1 << 20), MAX_API_CONNECTIONS);
        assert_eq!(capture_files(2048), 2048 - 256 - 512);
    }
}
