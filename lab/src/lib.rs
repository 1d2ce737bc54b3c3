//! `tapwire lab`: a whole tapwire system on one machine, in network namespaces.
//!
//! Two hypervisor hosts with a Linux bridge and two VMs each, a third host whose Open vSwitch
//! mirrors over ERSPAN (when OVS is installed), a monitoring VM, a mirror network and a
//! collector. A `tapwire-probe` on each Linux host and OVS on the third mirror the VMs' traffic
//! to `tapwire collect`, whose named sessions reproduce the port-mirroring workflows of oVirt,
//! MidoNet, Cloudpods/ZStack, Nutanix AHV and Open vSwitch (see [`plan::SESSIONS`]); steady
//! traffic (ping, iperf3, HTTP, broadcast, multicast) keeps every session receiving.
//!
//! - [`plan`]: the lab as data (pure): names, addresses, links, setup scripts, the collector's
//!   and the probes' configuration files, the traffic.
//! - [`up`], [`down`], [`status`]: carry the plan out, undo it, report on it. Everything a lab
//!   makes is inside namespaces named `tw-<name>-<role>` and every process it starts is
//!   recorded under `/run/tapwire-lab/<name>/`, so `down` removes it all, also after `up`
//!   crashed half-way.
//! - [`record`]: what `up` writes down about a lab (`lab.json`) and the words the three share.
//! - [`sys`] and [`ovs`]: the commands that touch the system; [`keeper`]: the parent of every
//!   process of a lab, which reaps each as it ends.
//!
//! The command line (`tapwire lab up|down|status|top`) is the `tapwire` binary's; it calls
//! [`up::up`], [`down::run`], [`status::run`], [`up::top`] and [`keeper::keep`] and hands the
//! result to [`exit`].

pub mod down;
pub mod fleet;
pub mod keeper;
pub mod ovs;
pub mod pg;
pub mod plan;
pub mod record;
pub mod status;
pub mod sys;
pub mod up;

use std::path::PathBuf;
use std::process::ExitCode;

/// `tapwire lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The lab's name: its namespaces are `tw-<name>-<role>`.
    pub name: String,
    /// Where the collector writes its session files; `None`: `./captures/<name>`.
    pub out: Option<PathBuf>,
    /// Return once every session receives instead of showing the UI.
    pub detach: bool,
    /// Leave out the Open vSwitch host even when Open vSwitch is installed.
    pub no_ovs: bool,
    /// How long to wait for every session to receive, in seconds.
    pub wait: u64,
    /// The tapwire-probe binary [default: beside this binary, else on the PATH].
    pub probe: Option<PathBuf>,
    /// A fleet: PostgreSQL and three collectors instead of one (see [`fleet`]).
    pub fleet: bool,
}

/// The exit status of `tapwire lab ...`: 0 on success; 1 when the lab did not come up (or is
/// not whole); 2 for a refused request (not root, a tool missing, already up); 3 from
/// `status` when no lab is up.
pub fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tapwire lab: {e:#}");
            if e.is::<Refused>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A request refused before anything was made (exit status 2).
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}
