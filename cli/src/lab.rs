//! `tapwire lab up|down|status|top|fail|revive`: the flags; the work is `tapwire-lab`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tapwire_lab::{down, fleet, keeper, plan, status, up};

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
    /// Show the collector's UI of a running lab (`tapwire top` inside its namespace; with
    /// `--fleet`, `tapwire top --fleet`).
    Top(NameArg),
    /// Kill a collector of a fleet lab with SIGKILL and show its sessions move to live
    /// collectors (within the 6 s lease).
    Fail(CollectorArg),
    /// Start a killed collector of a fleet lab again; the sessions that moved stay where they
    /// are.
    Revive(CollectorArg),
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
pub struct CollectorArg {
    /// The collector: col1, col2 or col3.
    pub collector: String,
    #[command(flatten)]
    pub name: NameArg,
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
    /// A fleet: a throw-away PostgreSQL and three collectors (col1, col2, col3) in namespaces,
    /// sessions placed `auto` and probes that take their flows from any live collector
    /// (no Open vSwitch host, no monitoring VM). `lab fail` and `lab revive` show a failover.
    #[arg(long)]
    pub fleet: bool,
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

/// Runs `tapwire lab ...` (exit status: [`tapwire_lab::exit`]).
pub fn run(args: LabArgs) -> ExitCode {
    tapwire_lab::exit(match args.command {
        LabCommand::Up(a) => up::up(&tapwire_lab::UpOptions {
            name: a.name.name,
            out: a.out,
            detach: a.detach,
            no_ovs: a.no_ovs,
            wait: a.wait,
            probe: a.probe,
            fleet: a.fleet,
        }),
        LabCommand::Down(a) => down::run(&a.name),
        LabCommand::Status(a) => status::run(&a.name.name, a.json),
        LabCommand::Top(a) => up::top(&a.name),
        LabCommand::Fail(a) => fleet::fail(&a.name.name, &a.collector),
        LabCommand::Revive(a) => fleet::revive(&a.name.name, &a.collector),
        LabCommand::Keep => keeper::keep(),
    })
}
