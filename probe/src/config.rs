//! The probe's configuration: a TOML file with many flows, or one flow from the command line.
//! Both become complete [`FlowSpec`]s (the shape a controller will send later) and are checked
//! here, before anything is opened. Pure: no sockets, no files (the caller reads the file).
//!
//! ```toml
//! [probe]
//! stats = "127.0.0.1:9751"      # or "off"
//! stats_interval = "10s"        # a line per flow this often on stderr; "off": never
//! user = "tapwire"              # when started as root: switch to this user after start
//! send_path = "auto"            # auto, fast (transmit ring) or raw (raw socket)
//! gre_checksum = false          # a GRE checksum in every datagram
//!
//! [defaults]                    # every flow starts from these
//! collector = "192.0.2.10"
//! encap = "erspan-ii"
//!
//! [[flow]]
//! name = "vm1"
//! interface = "tap-vm1"
//! direction = "both"
//! filter = "not arp"
//! session = 10
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tapwire_api_types::flow;
use tapwire_api_types::probe::FlowSpec;
use tapwire_netio::ring::RingConfig;

/// A configuration problem, phrased for the operator: it names the flow and the field.
pub use tapwire_api_types::flow::FlowError as ConfigError;
pub use tapwire_api_types::flow::{FlowFields, NumOrText, parse_rate, rate};

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(10);

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The stats API; `None`: off.
    pub stats: Option<SocketAddr>,
    /// How often a line per flow is printed; `None`: never.
    pub stats_interval: Option<Duration>,
    /// Switch to this user after start (when started as root).
    pub user: Option<String>,
    /// How datagrams leave: `auto` (the transmit ring where it can), `fast`, `raw`.
    pub send_path: crate::path::SendMode,
    /// A GRE checksum in every datagram.
    pub gre_checksum: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stats: Some(
                tapwire_api_types::probe::DEFAULT_ADDR
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9751))),
            ),
            stats_interval: Some(DEFAULT_STATS_INTERVAL),
            user: None,
            send_path: crate::path::SendMode::Auto,
            gre_checksum: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    pub settings: Settings,
    pub flows: Vec<FlowSpec>,
}

/// A valid flow for unit tests, on an interface that does not exist: its threads wait for
/// it and open nothing.
#[cfg(test)]
pub fn test_flow(name: &str, filter: Option<&str>) -> FlowSpec {
    FlowFields {
        name: Some(name.into()),
        interface: Some("twnone0".into()),
        filter: filter.map(String::from),
        session: Some(3),
        collector: Some("127.0.0.1".parse().expect("addr")),
        ..FlowFields::default()
    }
    .resolve("test")
    .expect("valid")
}

/// The complete flow, checked, the ring's geometry too. `what` names it in errors (`flow 2`,
/// `--iface`).
pub fn resolve(fields: &FlowFields, what: &str) -> Result<FlowSpec, ConfigError> {
    let spec = fields.resolve(what)?;
    check_ring(&spec)?;
    Ok(spec)
}

/// Checks one flow's values (everything except the filter's syntax, which libpcap checks).
pub fn validate(f: &FlowSpec) -> Result<(), ConfigError> {
    flow::validate(f)?;
    check_ring(f)
}

/// The capture ring's geometry, which depends on this machine's page size.
fn check_ring(f: &FlowSpec) -> Result<(), ConfigError> {
    let ring = RingConfig {
        block_size_bytes: f.block_size_bytes,
        block_count: f.block_count,
        block_timeout_ms: f.block_timeout_ms,
        snaplen: f.snaplen,
        ..RingConfig::default()
    };
    ring.validate()
        .map_err(|e| err(format!("flow {:?}: {e}", f.name)))
}

/// Flow names must be unique.
pub fn check_unique(flows: &[FlowSpec]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for f in flows {
        if !seen.insert(f.name.as_str()) {
            return Err(err(format!(
                "two flows are named {:?}: give each a unique name",
                f.name
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    stats: Option<String>,
    stats_interval: Option<String>,
    user: Option<String>,
    send_path: Option<String>,
    gre_checksum: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    probe: ProbeSection,
    #[serde(default)]
    defaults: FlowFields,
    #[serde(default)]
    flow: Vec<FlowFields>,
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<ProbeConfig, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
    let settings = Settings {
        stats: match file.probe.stats.as_deref() {
            None => Settings::default().stats,
            Some(v) => stats_addr(v).map_err(|e| err(format!("[probe] stats: {e}")))?,
        },
        stats_interval: match file.probe.stats_interval.as_deref() {
            None => Settings::default().stats_interval,
            Some(v) => interval(v).map_err(|e| err(format!("[probe] stats_interval: {e}")))?,
        },
        user: file.probe.user,
        send_path: match file.probe.send_path.as_deref() {
            None => Settings::default().send_path,
            Some(v) => crate::path::SendMode::parse(v)
                .map_err(|e| err(format!("[probe] send_path: {e}")))?,
        },
        gre_checksum: file.probe.gre_checksum.unwrap_or(false),
    };
    if file.flow.is_empty() {
        return Err(err("no [[flow]] in the file"));
    }
    let flows = file
        .flow
        .iter()
        .enumerate()
        .map(|(i, f)| resolve(&f.or(&file.defaults), &format!("flow {}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique(&flows)?;
    Ok(ProbeConfig { settings, flows })
}

/// TOML errors span several lines (with a caret under the spot); the exit-2 message is one.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| {
            // Drop the source excerpt ("1 | [[flow]", "  |        ^").
            let excerpt = l
                .split_once('|')
                .is_some_and(|(n, _)| n.trim().bytes().all(|b| b.is_ascii_digit()));
            !l.is_empty() && !excerpt && !l.chars().all(|c| c == '^')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ADDR:PORT` or `off`.
pub fn stats_addr(v: &str) -> Result<Option<SocketAddr>, String> {
    if v == "off" {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{v:?} is not ADDR:PORT or off"))
}

/// A duration like `10s`, or `off`/`0`.
pub fn interval(v: &str) -> Result<Option<Duration>, String> {
    if v == "off" || v == "0" {
        return Ok(None);
    }
    let d = humantime::parse_duration(v)
        .map_err(|_| format!("{v:?} is not a duration like \"10s\" or off"))?;
    Ok(Some(d).filter(|d| !d.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    use tapwire_api_types::probe::{Direction, Encapsulation, ErspanTime};

    #[test]
    fn file_with_defaults_and_flows() {
        let text = r#"
            [probe]
            stats = "off"
            stats_interval = "2s"
            user = "tapwire"
            send_path = "raw"
            gre_checksum = true

            [defaults]
            collector = "2001:db8::9"
            encap = "erspan-iii"
            erspan_time = "ieee1588"
            rate_bps = "1.5G"

            [[flow]]
            name = "a"
            interface = "tap0"
            session = 1
            vlans = [10, 20]
            untagged = true

            [[flow]]
            name = "b"
            interface = "br0"
            session = 2
            encap = "gre"
            direction = "out"
            filter = "tcp port 443"
            snaplen = 128
            sample = 10
            rate_pps = "10k"
            burst = "1s"
            promiscuous = true
            threads = 2
            block_size = "4MiB"
            mtu = 1400
        "#;
        let c = parse(text).expect("valid file");
        assert_eq!(c.settings.stats, None);
        assert_eq!(c.settings.stats_interval, Some(Duration::from_secs(2)));
        assert_eq!(c.settings.user.as_deref(), Some("tapwire"));
        assert_eq!(c.settings.send_path, crate::path::SendMode::Raw);
        assert!(c.settings.gre_checksum);
        let (a, b) = (&c.flows[0], &c.flows[1]);
        assert_eq!(a.encap, Encapsulation::ErspanIii);
        assert_eq!(a.erspan_time, ErspanTime::Ieee1588);
        assert_eq!(a.collector, "2001:db8::9".parse::<IpAddr>().expect("addr"));
        assert_eq!((a.vlans.as_slice(), a.untagged), (&[10, 20][..], true));
        assert_eq!(a.rate_bps, Some(1_500_000_000));
        assert_eq!(b.encap, Encapsulation::Gre);
        assert_eq!(b.direction, Direction::Out);
        assert_eq!(b.filter.as_deref(), Some("tcp port 443"));
        assert_eq!((b.snaplen, b.sample), (Some(128), 10));
        assert_eq!(
            (b.rate_pps, b.rate_bps),
            (Some(10_000), Some(1_500_000_000))
        );
        assert_eq!(b.burst_ms, 1000);
        assert!(b.promiscuous);
        assert_eq!(
            (b.threads, b.block_size_bytes, b.mtu),
            (2, 4 << 20, Some(1400))
        );
    }

    #[test]
    fn the_ring_geometry_is_checked_with_the_fields() {
        let fields = FlowFields {
            interface: Some("veth0".into()),
            session: Some(5),
            collector: Some("192.0.2.9".parse().expect("addr")),
            block_size: Some(NumOrText::Num(5000)),
            ..FlowFields::default()
        };
        // The shared fields alone pass; the probe's own check names the flow.
        assert!(fields.resolve("flow 3").is_ok());
        let e = resolve(&fields, "flow 3")
            .expect_err("page size")
            .to_string();
        assert!(e.starts_with("flow \"veth0\": "), "{e}");
        assert!(e.contains("page size"), "{e}");
        assert!(validate(&fields.resolve("flow 3").expect("fields")).is_err());
    }

    #[test]
    fn file_errors_are_one_line() {
        for (text, needle) in [
            (
                "[[flow]]\ninterface = \"a\"\nsesion = 1\n",
                "unknown field `sesion`",
            ),
            ("[probe]\nstats = \"nowhere\"\n", "stats"),
            (
                "[probe]\nsend_path = \"quick\"\n",
                "send_path: \"quick\" is not a send path",
            ),
            ("", "no [[flow]]"),
            (
                "[defaults]\nsession = 1\ncollector = \"192.0.2.1\"\n[[flow]]\ninterface = \"a\"\n[[flow]]\ninterface = \"a\"\n",
                "two flows are named \"a\"",
            ),
            ("[[flow]\n", "unclosed array table"),
        ] {
            let e = parse(text).expect_err(needle).to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
            assert!(!e.contains('\n'), "{e:?} is one line");
        }
    }

    #[test]
    fn intervals_and_addresses() {
        assert_eq!(interval("off"), Ok(None));
        assert_eq!(interval("0s"), Ok(None));
        assert_eq!(interval("500ms"), Ok(Some(Duration::from_millis(500))));
        assert!(interval("often").is_err());
        assert_eq!(stats_addr("off"), Ok(None));
        assert!(stats_addr("9751").is_err());
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../dist/probe.toml");
        let c = parse(text).expect("dist/probe.toml is valid");
        assert!(c.flows.len() >= 3, "the example shows several flows");
        for f in &c.flows {
            if let Some(expr) = &f.filter {
                crate::filter::compile(expr).expect("example filters compile");
            }
        }
    }
}
