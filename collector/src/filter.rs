//! tcpdump-syntax filters on inner frames, compiled by libpcap and run in user space.

use pcap::{BpfProgram, Capture, Linktype};
use tapwire_formats::capture::LinkType;

/// A compiled filter for inner frames of either link type tapwire writes.
pub struct InnerFilter {
    expr: String,
    ethernet: BpfProgram,
    /// Frames that are raw IP (ERSPAN III FT=2, GENEVE carrying IP); `None` when the expression
    /// only makes sense for Ethernet (`ether host ...`), in which case they never match.
    raw: Option<BpfProgram>,
}

// SAFETY: the compiled programs are heap memory libpcap allocated for this value alone (freed
// by pcap_freecode when it drops) and `pcap_offline_filter` only reads them: nothing ties them
// to the thread that compiled them. A live stream's filter is compiled on the API's blocking
// pool and run by the task serving the stream. (Not `Sync`: never shared.)
#[allow(unsafe_code)]
unsafe impl Send for InnerFilter {}

impl std::fmt::Debug for InnerFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InnerFilter").field(&self.expr).finish()
    }
}

impl InnerFilter {
    /// Compiles `expr`; the error is libpcap's own message.
    pub fn compile(expr: &str) -> Result<InnerFilter, String> {
        let ethernet = compile(Linktype::ETHERNET, expr)?;
        // pcap_open_dead takes a DLT, and DLT_RAW is 12 on Linux (LINKTYPE_RAW, 101, is the
        // file-format number).
        let raw = compile(Linktype(12), expr).ok();
        Ok(InnerFilter {
            expr: expr.to_string(),
            ethernet,
            raw,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    #[inline]
    pub fn matches(&self, link: LinkType, frame: &[u8]) -> bool {
        match link {
            LinkType::Raw => self.raw.as_ref().is_some_and(|p| p.filter(frame)),
            _ => self.ethernet.filter(frame),
        }
    }
}

fn compile(link: Linktype, expr: &str) -> Result<BpfProgram, String> {
    let dead = Capture::dead(link).map_err(|e| e.to_string())?;
    dead.compile(expr, true).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(dst_port: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[0x30, 0x39]);
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&[0, 8, 0, 0]);
        f
    }

    #[test]
    fn filters_ethernet_and_raw_ip() {
        let f = InnerFilter::compile("udp port 53").unwrap();
        assert!(f.matches(LinkType::Ethernet, &udp_frame(53)));
        assert!(!f.matches(LinkType::Ethernet, &udp_frame(54)));
        assert!(f.matches(LinkType::Raw, &udp_frame(53)[14..]));
        let e = InnerFilter::compile("ether host 02:00:00:00:00:01").unwrap();
        assert!(e.matches(LinkType::Ethernet, &udp_frame(1)));
        assert!(!e.matches(LinkType::Raw, &udp_frame(1)[14..]));
    }

    #[test]
    fn bad_filter_gives_libpcap_message() {
        let e = InnerFilter::compile("tcp port").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
    }
}
