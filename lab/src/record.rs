//! What `up` writes down about a lab (`<state>/lab.json`) and the words `up`, `down` and
//! `status` share: how this binary was invoked and what sends each session's traffic.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plan::{self, Plan, Sender};

/// What `up` wrote down about a lab, for `status` and `down` (`<state>/lab.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    pub out: PathBuf,
    pub ovs: bool,
    /// `lab up --fleet`: collectors on PostgreSQL.
    #[serde(default)]
    pub fleet: bool,
    /// The `tapwire` binary that brought it up (its `top` reads the collector's API).
    pub tapwire: PathBuf,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl Info {
    pub fn load(name: &str) -> Option<Info> {
        let text = std::fs::read_to_string(plan::state_dir(name).join("lab.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn plan(&self) -> Plan {
        Plan {
            name: self.name.clone(),
            out: self.out.clone(),
            ovs: self.ovs,
            fleet: self.fleet,
        }
    }
}

/// How this binary was invoked (`target/release/tapwire`), for hints a user can paste.
pub fn invoked_as() -> String {
    std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "tapwire".into())
}

/// `host1 probe: br0 both, promiscuous, ERSPAN III`.
pub fn sender(s: &plan::Session) -> String {
    match s.sender {
        Sender::Probe(f) => {
            let mut d = format!("{} probe: {} {}", f.host, f.interface, f.direction);
            if f.promiscuous {
                d.push_str(", promiscuous");
            }
            if let Some(filter) = f.filter {
                d.push_str(&format!(", '{filter}'"));
            }
            d.push_str(&format!(", {} {}", f.encap, s.id));
            d
        }
        Sender::Ovs => format!("host3 Open vSwitch: br-int mirror, {} {}", s.kind, s.id),
    }
}
