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
//! - [`sys`] and [`ovs`]: the commands that touch the system; [`keeper`]: the parent of every
//!   process of a lab, which reaps each as it ends.

pub mod down;
pub mod keeper;
pub mod ovs;
pub mod plan;
pub mod status;
pub mod sys;
pub mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

/// `tapwire lab`.
#[derive(Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab, start probes, collector and traffic, wait until every session receives,
    /// then show the collector's UI (the lab stays up when the UI quits).
    Up(UpArgs),
    /// Stop every process of the lab and remove its namespaces (its captures stay).
    Down(NameArg),
    /// What is up: namespaces, processes, sessions and their counts. Exit status 0 when every
    /// part is up and every session receiving, 1 when something is not, 3 when no lab is up.
    Status(StatusArgs),
    /// Show the collector's UI of a running lab (`tapwire top` inside its namespace).
    Top(NameArg),
    /// The lab's keeper, started by `up`: starts the lab's processes and reaps them.
    #[command(hide = true)]
    Keep,
}

#[derive(Args, Debug, Clone)]
pub struct NameArg {
    /// The lab's name: its namespaces are tw-NAME-<role>. Two labs with different names can
    /// run side by side.
    #[arg(long, default_value = plan::DEFAULT_NAME, value_parser = name)]
    pub name: String,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Where the collector writes its session files [default: ./captures/<NAME>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Return once every session receives, leaving the lab running, instead of showing the UI
    /// (for scripts and tests).
    #[arg(long, alias = "no-tui")]
    pub detach: bool,
    /// Leave out the Open vSwitch host even when Open vSwitch is installed.
    #[arg(long)]
    pub no_ovs: bool,
    /// How long to wait for every session to receive, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub wait: u64,
    /// The tapwire-probe binary [default: beside this binary, else on the PATH].
    #[arg(long, value_name = "PATH")]
    pub probe: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

fn name(s: &str) -> Result<String, String> {
    plan::validate_name(s).map(|()| s.to_string())
}

/// Runs `tapwire lab ...`. Exit status 0 on success; 1 when the lab did not come up (or is
/// not whole); 2 for a refused request (not root, a tool missing, already up); 3 from
/// `status` when no lab is up.
pub fn run(args: LabArgs) -> ExitCode {
    let result = match args.command {
        LabCommand::Up(a) => up::up(&a),
        LabCommand::Down(a) => down::run(&a.name),
        LabCommand::Status(a) => status::run(&a.name.name, a.json),
        LabCommand::Top(a) => up::top(&a),
        LabCommand::Keep => keeper::keep(),
    };
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
