//! The `tapwire` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tapwire_collector::offline::{self, DecapOptions, Report, Timestamps};
use tapwire_formats::capture::Format;
use tapwire_formats::decap;

#[derive(Parser)]
#[command(
    name = "tapwire",
    version,
    about = "Collects mirrored traffic (ERSPAN, GRE, VXLAN, GENEVE, TZSP) into per-session captures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Decapsulate mirrored traffic recorded in pcap/pcapng files into one capture per source.
    Decap(DecapArgs),
}

#[derive(Args)]
struct DecapArgs {
    /// Capture files (pcap or pcapng, any link type carrying IP), read in the order given.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Directory for one file per source, named <src>_<kind>_<id>.pcapng.
    #[arg(long, short, required_unless_present = "single")]
    out: Option<PathBuf>,
    /// Write one pcapng with one interface per source instead.
    #[arg(long, conflicts_with = "out")]
    single: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = FormatArg::Pcapng)]
    format: FormatArg,
    /// Timestamps to write: the input's, or the ERSPAN Type III header's where it is absolute.
    #[arg(long, value_enum, default_value_t = TimestampsArg::Input)]
    timestamps: TimestampsArg,
    /// Print a JSON report on stdout instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ports: PortArgs,
}

#[derive(Args, Clone)]
struct PortArgs {
    /// UDP port(s) carrying VXLAN.
    #[arg(long = "vxlan-port", value_name = "PORT", default_values_t = [4789])]
    vxlan: Vec<u16>,
    /// UDP port(s) carrying GENEVE.
    #[arg(long = "geneve-port", value_name = "PORT", default_values_t = [6081])]
    geneve: Vec<u16>,
    /// UDP port(s) carrying TZSP.
    #[arg(long = "tzsp-port", value_name = "PORT", default_values_t = [37008])]
    tzsp: Vec<u16>,
}

impl PortArgs {
    fn ports(&self) -> decap::Ports {
        decap::Ports {
            vxlan: self.vxlan.clone(),
            geneve: self.geneve.clone(),
            tzsp: self.tzsp.clone(),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Pcapng,
    /// Classic pcap, microsecond timestamps.
    Pcap,
    /// Classic pcap, nanosecond timestamps.
    PcapNs,
}

#[derive(Clone, Copy, ValueEnum)]
enum TimestampsArg {
    Input,
    Erspan,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Decap(args) => decap(args),
    }
}

fn decap(args: DecapArgs) -> ExitCode {
    let opts = DecapOptions {
        inputs: args.inputs,
        out_dir: args.out,
        single: args.single,
        format: match args.format {
            FormatArg::Pcapng => Format::Pcapng,
            FormatArg::Pcap => Format::Pcap { nanos: false },
            FormatArg::PcapNs => Format::Pcap { nanos: true },
        },
        timestamps: match args.timestamps {
            TimestampsArg::Input => Timestamps::Input,
            TimestampsArg::Erspan => Timestamps::Erspan,
        },
        config: decap::Config {
            ports: args.ports.ports(),
            ..decap::Config::default()
        },
        ..DecapOptions::default()
    };
    let report = match offline::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tapwire decap: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("tapwire decap: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_table(&report);
    }
    for e in &report.errors {
        eprintln!("tapwire decap: {e}");
    }
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_table(r: &Report) {
    let mut rows = vec![
        [
            "SOURCE", "KIND", "ID", "PACKETS", "BYTES", "LOST", "DUP", "REORD", "TRUNC",
            "SEQUENCE", "FILE",
        ]
        .map(String::from),
    ];
    for s in &r.sources {
        rows.push([
            s.src.clone(),
            s.kind.to_string(),
            s.id.to_string(),
            s.packets.to_string(),
            s.bytes.to_string(),
            s.lost.to_string(),
            s.duplicates.to_string(),
            s.reordered.to_string(),
            s.truncated.to_string(),
            serde_json::to_value(s.sequence)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            s.file.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    let t = &r.totals;
    println!();
    println!(
        "read {} packets, decapsulated {} from {} sources",
        t.packets_read,
        t.decapsulated,
        r.sources.len()
    );
    if !t.not_mirror.is_empty() {
        println!("not mirror traffic: {}", join_counts(&t.not_mirror));
    }
    if !t.malformed.is_empty() {
        println!("malformed: {}", join_counts(&t.malformed));
    }
    if t.defrag.fragments > 0 {
        println!(
            "outer fragments: {} ({} datagrams reassembled, {} incomplete, {} invalid)",
            t.defrag.fragments, t.defrag.reassembled, t.defrag.incomplete_at_end, t.defrag.invalid
        );
    }
}

fn join_counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
