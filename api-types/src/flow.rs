//! A flow's fields as written (a probe's TOML file or flags, a controller's flow definition):
//! anything may be missing and comes from `[defaults]` or the built-in default. [`FlowFields::resolve`]
//! makes the complete [`FlowSpec`] and checks it, so that the probe and the controller refuse
//! the same flows with the same words. Also the rates both accept (`5000`, `"100k"`, `"1.5G"`).
//! Pure: no sockets, no files.

use std::net::IpAddr;

use serde::Deserialize;

use crate::probe::{Direction, Encapsulation, ErspanTime, FlowSpec};

/// A flow problem, phrased for the operator: it names the flow and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

fn err(msg: impl Into<String>) -> FlowError {
    FlowError(msg.into())
}

pub const DEFAULT_BLOCK_SIZE_BYTES: u32 = 1 << 20;
pub const DEFAULT_BLOCK_COUNT: u32 = 16;
pub const DEFAULT_BLOCK_TIMEOUT_MS: u32 = 10;
pub const DEFAULT_BURST_MS: u32 = 100;
/// Sizes the kernel and the wire allow for the path MTU.
pub const MIN_MTU_V4: u32 = 68;
pub const MIN_MTU_V6: u32 = 1280;
pub const MAX_MTU: u32 = 65_535;

/// A number, or text with a unit (`"1MiB"`, `"100M"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NumOrText {
    Num(u64),
    Text(String),
}

/// One flow's fields as written: anything may be missing and comes from `[defaults]` or the
/// built-in default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFields {
    pub name: Option<String>,
    pub interface: Option<String>,
    pub direction: Option<Direction>,
    pub vlans: Option<Vec<u16>>,
    pub untagged: Option<bool>,
    pub filter: Option<String>,
    pub snaplen: Option<u32>,
    pub sample: Option<u32>,
    pub rate_pps: Option<NumOrText>,
    pub rate_bps: Option<NumOrText>,
    /// `"100ms"`.
    pub burst: Option<String>,
    pub session: Option<u16>,
    pub collector: Option<IpAddr>,
    pub encap: Option<Encapsulation>,
    pub hardware_id: Option<u8>,
    pub erspan_time: Option<ErspanTime>,
    pub promiscuous: Option<bool>,
    pub threads: Option<u16>,
    pub block_size: Option<NumOrText>,
    pub block_count: Option<u32>,
    pub block_timeout_ms: Option<u32>,
    pub mtu: Option<u32>,
}

impl FlowFields {
    /// `self`, with what it leaves out taken from `defaults`.
    pub fn or(&self, defaults: &FlowFields) -> FlowFields {
        macro_rules! pick {
            ($($f:ident),*) => { FlowFields { $($f: self.$f.clone().or_else(|| defaults.$f.clone())),* } };
        }
        pick!(
            name,
            interface,
            direction,
            vlans,
            untagged,
            filter,
            snaplen,
            sample,
            rate_pps,
            rate_bps,
            burst,
            session,
            collector,
            encap,
            hardware_id,
            erspan_time,
            promiscuous,
            threads,
            block_size,
            block_count,
            block_timeout_ms,
            mtu
        )
    }

    /// The complete flow, checked. `what` names it in errors (`flow 2`, `--iface`).
    pub fn resolve(&self, what: &str) -> Result<FlowSpec, FlowError> {
        let interface = self
            .interface
            .clone()
            .ok_or_else(|| err(format!("{what}: no interface")))?;
        let name = self.name.clone().unwrap_or_else(|| interface.clone());
        let what = format!("flow {name:?}");
        let field = |f: &str, e: String| err(format!("{what}: {f}: {e}"));
        let spec = FlowSpec {
            interface,
            direction: self.direction.unwrap_or_default(),
            vlans: self.vlans.clone().unwrap_or_default(),
            untagged: self.untagged.unwrap_or(false),
            filter: self.filter.clone().filter(|f| !f.trim().is_empty()),
            snaplen: self.snaplen,
            sample: self.sample.unwrap_or(1),
            rate_pps: self
                .rate_pps
                .as_ref()
                .map(rate)
                .transpose()
                .map_err(|e| field("rate_pps", e))?,
            rate_bps: self
                .rate_bps
                .as_ref()
                .map(rate)
                .transpose()
                .map_err(|e| field("rate_bps", e))?,
            burst_ms: match &self.burst {
                Some(t) => duration_ms(t).map_err(|e| field("burst", e))?,
                None => DEFAULT_BURST_MS,
            },
            session: self
                .session
                .ok_or_else(|| err(format!("{what}: no session id")))?,
            collector: self
                .collector
                .ok_or_else(|| err(format!("{what}: no collector address")))?,
            encap: self.encap.unwrap_or_default(),
            hardware_id: self.hardware_id.unwrap_or(0),
            erspan_time: self.erspan_time.unwrap_or_default(),
            promiscuous: self.promiscuous.unwrap_or(false),
            threads: self.threads.unwrap_or(1),
            block_size_bytes: match &self.block_size {
                Some(v) => size(v)
                    .and_then(|n| u32::try_from(n).map_err(|_| format!("{n} bytes is too large")))
                    .map_err(|e| field("block_size", e))?,
                None => DEFAULT_BLOCK_SIZE_BYTES,
            },
            block_count: self.block_count.unwrap_or(DEFAULT_BLOCK_COUNT),
            block_timeout_ms: self.block_timeout_ms.unwrap_or(DEFAULT_BLOCK_TIMEOUT_MS),
            mtu: self.mtu,
            name,
        };
        validate(&spec)?;
        Ok(spec)
    }
}

/// Checks one flow's values: everything but the filter's syntax (libpcap's) and the capture
/// ring's geometry (the probe's, which knows the page size).
pub fn validate(f: &FlowSpec) -> Result<(), FlowError> {
    let what = format!("flow {:?}", f.name);
    let bad = |m: String| Err(err(format!("{what}: {m}")));
    if f.name.is_empty() || f.name.chars().any(|c| c.is_control()) {
        return bad("the name must be non-empty printable text".into());
    }
    // IFNAMSIZ is 16 with the terminating NUL.
    if f.interface.is_empty() || f.interface.len() > 15 || f.interface.contains(['/', ' ']) {
        return bad(format!(
            "interface {:?} is not an interface name (1 to 15 bytes)",
            f.interface
        ));
    }
    if let Some(v) = f.vlans.iter().find(|v| **v > 4095) {
        return bad(format!("VLAN {v} is above 4095"));
    }
    if f.untagged && f.vlans.is_empty() {
        return bad("untagged = true needs a vlans list (without one every frame is taken)".into());
    }
    if f.snaplen == Some(0) {
        return bad("snaplen must be at least 1 byte".into());
    }
    if f.sample == 0 {
        return bad("sample must be at least 1 (1: every packet)".into());
    }
    if f.rate_pps == Some(0) || f.rate_bps == Some(0) {
        return bad("a rate limit must be above 0 (leave it out for no limit)".into());
    }
    if f.burst_ms == 0 {
        return bad("burst must be above 0".into());
    }
    if f.session > 1023 {
        return bad(format!("session id {} is above 1023 (10 bits)", f.session));
    }
    if f.hardware_id > 63 {
        return bad(format!(
            "hardware id {} is above 63 (6 bits)",
            f.hardware_id
        ));
    }
    if f.collector.is_unspecified() || f.collector.is_multicast() {
        return bad(format!(
            "collector {} is not a unicast address",
            f.collector
        ));
    }
    if !(1..=64).contains(&f.threads) {
        return bad(format!("threads {} is not 1 to 64", f.threads));
    }
    if let Some(mtu) = f.mtu {
        let min = if f.collector.is_ipv4() {
            MIN_MTU_V4
        } else {
            MIN_MTU_V6
        };
        if !(min..=MAX_MTU).contains(&mtu) {
            return bad(format!("mtu {mtu} is not {min} to {MAX_MTU}"));
        }
    }
    Ok(())
}

fn duration_ms(v: &str) -> Result<u32, String> {
    let d = humantime::parse_duration(v)
        .map_err(|_| format!("{v:?} is not a duration like \"100ms\""))?;
    u32::try_from(d.as_millis()).map_err(|_| format!("{v:?} is too long"))
}

fn size(v: &NumOrText) -> Result<u64, String> {
    match v {
        NumOrText::Num(n) => Ok(*n),
        NumOrText::Text(t) => t
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| format!("{t:?} is not a size like \"1MiB\"")),
    }
}

/// A rate: a number, or a number with an SI suffix (`k`, `M`, `G`, `T`: powers of 1000).
pub fn rate(v: &NumOrText) -> Result<u64, String> {
    match v {
        NumOrText::Num(n) => Ok(*n),
        NumOrText::Text(t) => parse_rate(t),
    }
}

pub fn parse_rate(t: &str) -> Result<u64, String> {
    let s = t.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1_000),
        Some((i, 'M')) => (&s[..i], 1_000_000),
        Some((i, 'G')) => (&s[..i], 1_000_000_000),
        Some((i, 'T')) => (&s[..i], 1_000_000_000_000),
        _ => (s, 1),
    };
    let bad = || format!("{t:?} is not a rate like 5000, \"100k\", \"1G\"");
    let value = if let Some((whole, frac)) = digits.split_once('.') {
        // "1.5M": whole and fractional digits, computed in integers.
        let w: u64 = whole.parse().map_err(|_| bad())?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let f: u64 = frac.parse().map_err(|_| bad())?;
        let scale = 10u64.pow(frac.len() as u32);
        w.checked_mul(mult)
            .and_then(|x| x.checked_add(f.checked_mul(mult)? / scale))
    } else {
        digits.parse::<u64>().map_err(|_| bad())?.checked_mul(mult)
    };
    value.ok_or_else(|| format!("{t:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FlowFields {
        FlowFields {
            interface: Some("veth0".into()),
            session: Some(5),
            collector: Some("192.0.2.9".parse().expect("addr")),
            ..FlowFields::default()
        }
    }

    #[test]
    fn defaults_make_a_complete_flow() {
        let f = base().resolve("--iface").expect("valid");
        assert_eq!(f.name, "veth0");
        assert_eq!(f.direction, Direction::Both);
        assert_eq!(f.encap, Encapsulation::ErspanIi);
        assert_eq!((f.sample, f.threads), (1, 1));
        assert_eq!(f.block_size_bytes, 1 << 20);
        assert_eq!(f.filter, None);
        assert_eq!(f.mtu, None);
    }

    #[test]
    fn errors_name_the_flow_and_field() {
        let cases: Vec<(FlowFields, &str)> = vec![
            (
                FlowFields {
                    session: Some(1024),
                    ..base()
                },
                "above 1023",
            ),
            (
                FlowFields {
                    hardware_id: Some(64),
                    ..base()
                },
                "above 63",
            ),
            (
                FlowFields {
                    vlans: Some(vec![4096]),
                    ..base()
                },
                "VLAN 4096",
            ),
            (
                FlowFields {
                    untagged: Some(true),
                    ..base()
                },
                "needs a vlans list",
            ),
            (
                FlowFields {
                    sample: Some(0),
                    ..base()
                },
                "sample",
            ),
            (
                FlowFields {
                    snaplen: Some(0),
                    ..base()
                },
                "snaplen",
            ),
            (
                FlowFields {
                    rate_pps: Some(NumOrText::Num(0)),
                    ..base()
                },
                "above 0",
            ),
            (
                FlowFields {
                    rate_bps: Some(NumOrText::Text("fast".into())),
                    ..base()
                },
                "rate_bps: \"fast\"",
            ),
            (
                FlowFields {
                    burst: Some("soon".into()),
                    ..base()
                },
                "burst",
            ),
            (
                FlowFields {
                    threads: Some(0),
                    ..base()
                },
                "threads 0",
            ),
            (
                FlowFields {
                    mtu: Some(40),
                    ..base()
                },
                "mtu 40",
            ),
            (
                FlowFields {
                    mtu: Some(1000),
                    collector: Some("2001:db8::1".parse().expect("addr")),
                    ..base()
                },
                "mtu 1000 is not 1280",
            ),
            (
                FlowFields {
                    collector: Some("0.0.0.0".parse().expect("addr")),
                    ..base()
                },
                "unicast",
            ),
            (
                FlowFields {
                    interface: Some("a-very-long-interface".into()),
                    ..base()
                },
                "not an interface name",
            ),
            (
                FlowFields {
                    session: None,
                    ..base()
                },
                "no session",
            ),
            (
                FlowFields {
                    collector: None,
                    ..base()
                },
                "no collector",
            ),
            (
                FlowFields {
                    interface: None,
                    ..base()
                },
                "flow 3: no interface",
            ),
        ];
        for (fields, needle) in cases {
            let e = fields.resolve("flow 3").expect_err(needle).to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("5000"), Ok(5000));
        assert_eq!(parse_rate("100k"), Ok(100_000));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_rate("2G"), Ok(2_000_000_000));
        assert_eq!(parse_rate("0.001k"), Ok(1));
        for bad in [
            "",
            "M",
            "1.M",
            "-1",
            "1.5x",
            "99999999999999999999G",
            "1.1234567890k",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
