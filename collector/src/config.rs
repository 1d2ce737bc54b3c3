//! The collector's session configuration (TOML): which sources each named session gathers, its
//! inner filter, its outputs and their rotation. Parsing and validation are pure; compiling
//! filters is checked here so that a bad file is refused before anything changes.
//!
//! ```toml
//! [collector]
//! out = "/var/lib/tapwire"          # auto-discovered sessions and default file directory
//! auto_discover = true
//! allow = ["10.0.0.0/8"]            # outer source allow-list; empty or absent: everyone
//! min_free_disk = "2GiB"
//!
//! [defaults.files]                  # applied to every session's files unless overridden
//! format = "pcapng"
//! rotate = { size = "1GiB", interval = "1h" }
//! max_files = 48
//!
//! [[session]]
//! name = "web"
//! filter = "tcp port 443"
//! sources = [{ src = "10.1.0.0/16", kind = "erspan-ii", id = "10-19" }]
//! files = { dir = "/var/lib/tapwire/web", rotate = { size = "100MiB" }, hook = "compress" }
//!
//! [hooks]                           # commands run on finished files, chosen by name
//! compress = "gzip -9 \"$1\""
//! ```
//!
//! Sessions from this file (root's) may name any directory and run a literal `on_finish`
//! command. Sessions from the control API ([`api_session`]) may not: their directory is
//! relative to `out` and stays beneath it, their hook is a name from `[hooks]`, their TAP's
//! namespace a name from `/var/run/netns`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use tapwire_formats::capture::Format;
use tapwire_formats::decap::{Kind, SourceKey};

use crate::filter::{self, Filter};

/// A configuration problem, phrased for the operator: it names the session and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub collector: CollectorConfig,
    pub sessions: Vec<SessionConfig>,
    /// `[hooks]`: on-finish commands by name, the only ones an API session can choose.
    pub hooks: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectorConfig {
    pub out: Option<PathBuf>,
    pub auto_discover: Option<bool>,
    pub allow: Vec<IpNet>,
    pub min_free_disk_bytes: Option<u64>,
    /// Files settings every session starts from.
    pub default_files: FilesConfig,
    /// Auto-discovered sessions get a TAP named `<prefix><n>`.
    pub tap_prefix: Option<String>,
    pub limits: LimitsConfig,
}

/// What traffic may make the collector hold, as `[collector]` sets it (flags override each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    /// `max_sources`: sources in the table at once.
    pub max_sources: Option<usize>,
    /// `max_auto_sessions`: auto-discovered sessions at once.
    pub max_auto_sessions: Option<usize>,
    /// `idle_timeout`: sources and auto-discovered sessions with no packet for this long are
    /// removed.
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    pub name: String,
    pub enabled: bool,
    pub sources: Vec<SourceMatch>,
    /// Compiled when the definition was checked: the engine never compiles.
    pub filter: Option<Filter>,
    /// `None`: this session writes no files.
    pub files: Option<FilesConfig>,
    pub tap: Option<TapConfig>,
}

/// A session's monitor interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    pub name: String,
    /// Create the device inside this network namespace: an `ip netns` name (looked up in
    /// [`NETNS_DIR`]), or, in the configuration file only, a path.
    pub netns: Option<String>,
    /// Keep the device after the collector exits.
    pub persistent: bool,
    /// Put the ERSPAN header's VLAN back into frames that lost their tag.
    pub restore_vlan: bool,
    /// Only frames matching this tcpdump expression go to the TAP.
    pub filter: Option<Filter>,
    pub mtu: u16,
    /// Frames queued for the device before new ones are dropped (counted as `tap_dropped`).
    pub queue_frames: usize,
}

/// Large enough for any frame tapwire decapsulates (reassembled GRE reaches 64 KiB).
pub const DEFAULT_TAP_MTU: u16 = 65_000;
/// A burst of this many frames can wait for the device: measured with bench-tap.sh at 50 kpps,
/// 4096 dropped a few hundred frames now and then, 16384 none.
pub const DEFAULT_TAP_QUEUE: usize = 16_384;

impl TapConfig {
    pub fn named(name: &str) -> TapConfig {
        TapConfig {
            name: name.to_string(),
            netns: None,
            persistent: false,
            restore_vlan: true,
            filter: None,
            mtu: DEFAULT_TAP_MTU,
            queue_frames: DEFAULT_TAP_QUEUE,
        }
    }
}

/// Where `ip netns add` keeps named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// A network namespace name as `ip netns` gives it: a file name in [`NETNS_DIR`], never a path.
pub fn validate_netns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name == "." || name == ".." {
        return Err(format!(
            "{name:?}: a network namespace name is 1 to 255 characters"
        ));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(format!(
            "{name:?} is a path: give the name of a network namespace (`ip netns list`), which is looked up in {NETNS_DIR}"
        ));
    }
    Ok(())
}

/// Validates a TAP device name as the kernel will: at most 15 bytes, no '/', ':' or spaces.
pub fn validate_tap_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!("{name:?}: interface names are 1 to 15 characters"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
        || name == "."
        || name == ".."
    {
        return Err(format!(
            "{name:?}: no '/', ':' or spaces in interface names"
        ));
    }
    Ok(())
}

/// Which sources a session gathers: every given field must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceMatch {
    pub src: Option<IpNet>,
    pub kind: Option<Kind>,
    pub ids: Option<RangeInclusive<u32>>,
}

impl SourceMatch {
    pub fn matches(&self, key: &SourceKey) -> bool {
        self.src.is_none_or(|net| net.contains(&normalize(key.src)))
            && self.kind.is_none_or(|k| k == key.kind)
            && self.ids.as_ref().is_none_or(|r| r.contains(&key.id))
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compare as IPv4.
pub fn normalize(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FilesConfig {
    /// Directory for this session's files; the collector's `out` when absent. A relative one
    /// is beneath `out` (and stays there, symlinks included); an absolute one comes only from
    /// the configuration file.
    pub dir: Option<PathBuf>,
    pub format: Format,
    pub rotate: RotatePolicy,
    /// Files kept per session; the oldest are removed beyond it.
    pub max_files: Option<u32>,
    /// Shell command run on each finished file, with the path as `$1`: the configuration
    /// file's own `on_finish`, or the command of the hook named in [`FilesConfig::hook`].
    pub on_finish: Option<String>,
    /// The `[hooks]` entry `on_finish` comes from, when it was chosen by name.
    pub hook: Option<String>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            dir: None,
            format: Format::Pcapng,
            rotate: RotatePolicy::default(),
            max_files: None,
            on_finish: None,
            hook: None,
        }
    }
}

/// Where a session definition comes from: the rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file, root's: any directory, literal commands, namespace paths.
    File,
    /// The control API: a directory beneath `out`, hooks by name, namespace names.
    Api,
}

/// When a session's current file is finished and the next begun. Any condition met rotates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RotatePolicy {
    pub size_bytes: Option<u64>,
    /// Time since the file was opened.
    pub duration: Option<Duration>,
    /// Wall-clock aligned: with one hour, files end on the hour (UTC).
    pub interval: Option<Duration>,
    pub packets: Option<u64>,
}

/// Why a file was rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RotateReason {
    Size,
    Duration,
    Interval,
    Packets,
    Requested,
    Reconfigured,
    Shutdown,
    /// An auto-discovered session expired after `idle_timeout` without a packet.
    Idle,
}

impl RotatePolicy {
    /// Whether a file opened at `opened_ns` holding `bytes` and `packets` is due at `now_ns`.
    pub fn due(
        &self,
        opened_ns: u64,
        bytes: u64,
        packets: u64,
        now_ns: u64,
    ) -> Option<RotateReason> {
        if self.size_bytes.is_some_and(|s| bytes >= s) {
            return Some(RotateReason::Size);
        }
        if self.packets.is_some_and(|p| packets >= p) {
            return Some(RotateReason::Packets);
        }
        if self
            .duration
            .is_some_and(|d| now_ns.saturating_sub(opened_ns) >= d.as_nanos() as u64)
        {
            return Some(RotateReason::Duration);
        }
        if let Some(i) = self.interval
            && now_ns >= next_boundary_ns(opened_ns, i)
        {
            return Some(RotateReason::Interval);
        }
        None
    }
}

/// The file settings of `tapwire collect`'s flags (`--format`, `--rotate-size`,
/// `--rotate-duration`, `--rotate-interval`, `--rotate-packets`, `--max-files`,
/// `--on-finish`). Each flag given replaces that one field of `[defaults.files]`; sessions then
/// start from the result, so a session's own `files.X` still wins (`rotate` counts as one
/// field there, as in the file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileFlags {
    pub format: Option<Format>,
    /// `Some(0)`: no rotation by size, whatever `[defaults.files]` says.
    pub rotate_size_bytes: Option<u64>,
    pub rotate_duration: Option<Duration>,
    pub rotate_interval: Option<Duration>,
    pub rotate_packets: Option<u64>,
    pub max_files: Option<u32>,
    pub on_finish: Option<String>,
}

impl FileFlags {
    /// `base` with every given flag in place of its field.
    pub fn over(&self, base: &FilesConfig) -> FilesConfig {
        let mut f = base.clone();
        let r = &mut f.rotate;
        if let Some(n) = self.rotate_size_bytes {
            r.size_bytes = (n > 0).then_some(n);
        }
        r.duration = self.rotate_duration.or(r.duration);
        r.interval = self.rotate_interval.or(r.interval);
        r.packets = self.rotate_packets.or(r.packets);
        f.format = self.format.unwrap_or(f.format);
        f.max_files = self.max_files.or(f.max_files);
        if self.on_finish.is_some() {
            // The flag's command replaces a hook the defaults name.
            f.on_finish = self.on_finish.clone();
            f.hook = None;
        }
        f
    }
}

/// The first multiple of `interval` since the Unix epoch strictly after `t_ns`.
pub fn next_boundary_ns(t_ns: u64, interval: Duration) -> u64 {
    let i = (interval.as_nanos() as u64).max(1);
    (t_ns / i + 1).saturating_mul(i)
}

// ---------------------------------------------------------------------------------------------
// The TOML shape, parsed with unknown fields refused, then validated into the types above.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    collector: RawCollector,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    session: Vec<RawSession>,
    #[serde(default)]
    hooks: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    out: Option<PathBuf>,
    auto_discover: Option<bool>,
    #[serde(default)]
    allow: Vec<String>,
    min_free_disk: Option<SizeValue>,
    tap_prefix: Option<String>,
    max_sources: Option<usize>,
    max_auto_sessions: Option<usize>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    files: Option<RawFiles>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    sources: Vec<RawMatch>,
    filter: Option<String>,
    files: Option<RawFilesOrOff>,
    tap: Option<RawTap>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawTap {
    Name(String),
    Full(RawTapFull),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTapFull {
    name: String,
    netns: Option<String>,
    #[serde(default)]
    persistent: bool,
    #[serde(default = "yes")]
    restore_vlan: bool,
    filter: Option<String>,
    mtu: Option<u16>,
    queue: Option<usize>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawFilesOrOff {
    Off(bool),
    On(RawFiles),
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    dir: Option<PathBuf>,
    format: Option<String>,
    rotate: Option<RawRotate>,
    max_files: Option<u32>,
    on_finish: Option<String>,
    hook: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawRotate {
    size: Option<SizeValue>,
    duration: Option<String>,
    interval: Option<String>,
    packets: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    src: Option<String>,
    kind: Option<String>,
    id: Option<IdValue>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IdValue {
    One(u32),
    Text(String),
}

impl FromStr for Config {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Config::parse_with(text, &FileFlags::default())
    }
}

impl Config {
    /// Parses a configuration file with the command line's file flags laid over its
    /// `[defaults.files]`, so that they reach every session that does not set the field itself.
    pub fn parse_with(text: &str, flags: &FileFlags) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().replace('\n', " ")))?;
        for (name, command) in &raw.hooks {
            validate_name(name).map_err(|e| err(format!("[hooks] {name:?}: {e}")))?;
            if command.trim().is_empty() {
                return Err(err(format!("[hooks] {name:?}: the command is empty")));
            }
        }
        let hooks = raw.hooks;
        let default_files = flags.over(&match &raw.defaults.files {
            Some(f) => files(
                f,
                &FilesConfig::default(),
                Origin::File,
                &hooks,
                "[defaults.files]",
            )?,
            None => FilesConfig::default(),
        });
        let collector = CollectorConfig {
            out: raw.collector.out,
            auto_discover: raw.collector.auto_discover,
            allow: raw
                .collector
                .allow
                .iter()
                .map(|s| cidr(s).map_err(|e| err(format!("[collector] allow: {e}"))))
                .collect::<Result<_, _>>()?,
            min_free_disk_bytes: raw
                .collector
                .min_free_disk
                .as_ref()
                .map(|v| size(v).map_err(|e| err(format!("[collector] min_free_disk: {e}"))))
                .transpose()?,
            default_files,
            tap_prefix: raw.collector.tap_prefix.clone(),
            limits: LimitsConfig {
                max_sources: raw
                    .collector
                    .max_sources
                    .map(|n| {
                        at_least_one(n).map_err(|e| err(format!("[collector] max_sources: {e}")))
                    })
                    .transpose()?,
                max_auto_sessions: raw.collector.max_auto_sessions,
                idle_timeout: raw
                    .collector
                    .idle_timeout
                    .as_deref()
                    .map(|v| duration(v).map_err(|e| err(format!("[collector] idle_timeout: {e}"))))
                    .transpose()?,
            },
        };
        if let Some(p) = &collector.tap_prefix {
            // Room for a number after it.
            validate_tap_name(&format!("{p}999"))
                .map_err(|e| err(format!("[collector] tap_prefix: {e}")))?;
        }
        let mut sessions = Vec::new();
        for s in raw.session {
            let at = format!("session {:?}", s.name);
            validate_name(&s.name).map_err(|e| err(format!("{at}: name: {e}")))?;
            if sessions.iter().any(|o: &SessionConfig| o.name == s.name) {
                return Err(err(format!("{at}: defined twice")));
            }
            if s.sources.is_empty() {
                return Err(err(format!(
                    "{at}: sources: at least one source rule is needed"
                )));
            }
            let sources = s
                .sources
                .iter()
                .enumerate()
                .map(|(i, m)| source_match(m).map_err(|e| err(format!("{at}: sources[{i}]: {e}"))))
                .collect::<Result<_, _>>()?;
            let session = build_session(
                s.name,
                s.enabled,
                sources,
                s.filter,
                s.files,
                s.tap,
                &Defaults {
                    files: &collector.default_files,
                    hooks: &hooks,
                    origin: Origin::File,
                },
                &at,
            )?;
            check_tap_unique(&session, &sessions, &at)?;
            sessions.push(session);
        }
        Ok(Config {
            collector,
            sessions,
            hooks,
        })
    }
}

/// What a session starts from, and by whose rules it is checked.
#[derive(Clone, Copy)]
pub struct Defaults<'a> {
    pub files: &'a FilesConfig,
    /// The configuration file's `[hooks]`.
    pub hooks: &'a BTreeMap<String, String>,
    pub origin: Origin,
}

/// Checks one session's filter, files and TAP (the shared part of a `[[session]]` table and
/// a session created through the control API).
#[allow(clippy::too_many_arguments)]
fn build_session(
    name: String,
    enabled: bool,
    sources: Vec<SourceMatch>,
    filter: Option<String>,
    files: Option<RawFilesOrOff>,
    tap: Option<RawTap>,
    defaults: &Defaults<'_>,
    at: &str,
) -> Result<SessionConfig, ConfigError> {
    let filter = filter
        .map(|f| compiled(&f, &format!("{at}: filter")))
        .transpose()?;
    let files = match &files {
        None | Some(RawFilesOrOff::Off(true)) => Some(defaults.files.clone()),
        Some(RawFilesOrOff::Off(false)) => None,
        Some(RawFilesOrOff::On(f)) => Some(self::files(
            f,
            defaults.files,
            defaults.origin,
            defaults.hooks,
            &format!("{at}: files"),
        )?),
    };
    let tap = match tap {
        None => None,
        Some(RawTap::Name(n)) => Some(TapConfig::named(&n)),
        Some(RawTap::Full(t)) => {
            let filter = t
                .filter
                .map(|f| compiled(&f, &format!("{at}: tap.filter")))
                .transpose()?;
            Some(TapConfig {
                name: t.name,
                netns: t.netns,
                persistent: t.persistent,
                restore_vlan: t.restore_vlan,
                filter,
                mtu: t.mtu.unwrap_or(DEFAULT_TAP_MTU),
                queue_frames: t.queue.unwrap_or(DEFAULT_TAP_QUEUE).clamp(1, 1 << 20),
            })
        }
    };
    if let Some(t) = &tap {
        validate_tap_name(&t.name).map_err(|e| err(format!("{at}: tap: {e}")))?;
        if let Some(ns) = &t.netns
            && (defaults.origin == Origin::Api || !ns.contains('/'))
        {
            validate_netns_name(ns).map_err(|e| err(format!("{at}: tap.netns: {e}")))?;
        }
    }
    Ok(SessionConfig {
        name,
        enabled,
        sources,
        filter,
        files,
        tap,
    })
}

fn check_tap_unique(
    s: &SessionConfig,
    others: &[SessionConfig],
    at: &str,
) -> Result<(), ConfigError> {
    if let Some(t) = &s.tap
        && others
            .iter()
            .any(|o| o.tap.as_ref().is_some_and(|x| x.name == t.name))
    {
        return Err(err(format!(
            "{at}: tap {:?} is used by another session",
            t.name
        )));
    }
    Ok(())
}

/// A session defined through the control API: `files` and `tap` have the shape of a
/// `[[session]]` table's (as JSON) and are checked by the same code, by the API's rules
/// whatever `defaults.origin` says; the sources are the caller's. Errors name the field.
pub fn api_session(
    name: &str,
    enabled: bool,
    sources: Vec<SourceMatch>,
    filter: Option<String>,
    files: Option<&serde_json::Value>,
    tap: Option<&serde_json::Value>,
    defaults: &Defaults<'_>,
) -> Result<SessionConfig, ConfigError> {
    validate_name(name).map_err(|e| err(format!("name: {e}")))?;
    let at = format!("session {name:?}");
    // Each field alone, so that an error inside an untagged shape still names its field.
    let files = files
        .map(|v| match v {
            serde_json::Value::Bool(b) => Ok(RawFilesOrOff::Off(*b)),
            v => serde_json::from_value::<RawFiles>(v.clone()).map(RawFilesOrOff::On),
        })
        .transpose()
        .map_err(|e| err(format!("{at}: files: {e}")))?;
    let tap = tap
        .map(|v| match v {
            serde_json::Value::String(n) => Ok(RawTap::Name(n.clone())),
            v => serde_json::from_value::<RawTapFull>(v.clone()).map(RawTap::Full),
        })
        .transpose()
        .map_err(|e| err(format!("{at}: tap: {e}")))?;
    build_session(
        name.to_string(),
        enabled,
        sources,
        filter.filter(|f| !f.trim().is_empty()),
        files,
        tap,
        &Defaults {
            origin: Origin::Api,
            ..*defaults
        },
        &at,
    )
}

/// The configuration the engine runs: the API's sessions first (their rules are exact: one
/// kind and one id), then the file's. Names and TAPs must be unique across both. The API's
/// hooks are looked up again in `file`'s `[hooks]`: a reloaded file changes their commands, and
/// one that no longer has a hook an API session names is refused.
pub fn merged(file: &Config, api: &[SessionConfig]) -> Result<Config, ConfigError> {
    let mut sessions: Vec<SessionConfig> = Vec::with_capacity(api.len() + file.sessions.len());
    let api = api.iter().map(|s| (s, Origin::Api));
    for (s, origin) in api.chain(file.sessions.iter().map(|s| (s, Origin::File))) {
        let at = format!("session {:?}", s.name);
        if sessions.iter().any(|o| o.name == s.name) {
            return Err(err(format!(
                "{at}: the name is taken (sessions from the file and from the API share one namespace)"
            )));
        }
        check_tap_unique(s, &sessions, &at)?;
        let mut s = s.clone();
        if origin == Origin::Api
            && let Some(f) = s.files.as_mut()
            && let Some(h) = &f.hook
        {
            f.on_finish = Some(
                hook_command(h, &file.hooks).map_err(|e| err(format!("{at}: files.hook: {e}")))?,
            );
        }
        sessions.push(s);
    }
    Ok(Config {
        collector: file.collector.clone(),
        sessions,
        hooks: file.hooks.clone(),
    })
}

/// The command of hook `name`; the error lists the hooks there are.
fn hook_command(name: &str, hooks: &BTreeMap<String, String>) -> Result<String, String> {
    hooks
        .get(name)
        .cloned()
        .ok_or_else(|| format!("no hook named {name:?}; {}", known_hooks(hooks)))
}

fn known_hooks(hooks: &BTreeMap<String, String>) -> String {
    if hooks.is_empty() {
        "the collector's configuration file defines none ([hooks])".into()
    } else {
        let names: Vec<&str> = hooks.keys().map(String::as_str).collect();
        format!(
            "the collector's configuration file defines {}",
            names.join(", ")
        )
    }
}

/// A session's own directory: the configuration file may name any absolute one; a relative
/// one (the only kind the API may give) is beneath `out` and may not climb out of it.
fn check_dir(dir: &Path, origin: Origin) -> Result<(), String> {
    let shown = dir.display();
    if dir.as_os_str().is_empty() {
        return Err("an empty directory: leave dir out for the collector's --out".into());
    }
    if dir.is_absolute() {
        return match origin {
            Origin::File => Ok(()),
            Origin::Api => Err(format!(
                "{shown:?} is absolute: sessions made through the API write beneath the collector's --out; give a relative directory like \"web\""
            )),
        };
    }
    if dir.as_os_str().len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "{shown:?} climbs out of the collector's --out ('..'): a relative directory stays beneath it"
        ));
    }
    Ok(())
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, &FileFlags::default())
    }

    /// [`Config::load`] with the command line's file flags (see [`Config::parse_with`]); a
    /// reload passes the same flags again.
    pub fn load_with(path: &Path, flags: &FileFlags) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        Config::parse_with(&text, flags)
            .map_err(|e: ConfigError| err(format!("{}: {}", path.display(), e.0)))
    }

    /// The first configured session whose rules match `key`, by index.
    pub fn session_for(&self, key: &SourceKey) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.sources.iter().any(|m| m.matches(key)))
    }
}

/// Session names become file names: keep them to a safe alphabet.
pub use tapwire_api_types::control::validate_name;

fn files(
    f: &RawFiles,
    base: &FilesConfig,
    origin: Origin,
    hooks: &BTreeMap<String, String>,
    at: &str,
) -> Result<FilesConfig, ConfigError> {
    let mut out = base.clone();
    if let Some(d) = &f.dir {
        check_dir(d, origin).map_err(|e| err(format!("{at}: dir: {e}")))?;
        out.dir = Some(d.clone());
    }
    if let Some(fmt) = &f.format {
        out.format = match fmt.as_str() {
            "pcapng" => Format::Pcapng,
            "pcap" => Format::Pcap { nanos: false },
            "pcap-ns" => Format::Pcap { nanos: true },
            other => {
                return Err(err(format!(
                    "{at}: format: {other:?} is not one of pcapng, pcap, pcap-ns"
                )));
            }
        };
    }
    if let Some(r) = &f.rotate {
        out.rotate = RotatePolicy {
            size_bytes: r
                .size
                .as_ref()
                .map(size)
                .transpose()
                .map_err(|e| err(format!("{at}: rotate.size: {e}")))?,
            duration: r
                .duration
                .as_deref()
                .map(duration)
                .transpose()
                .map_err(|e| err(format!("{at}: rotate.duration: {e}")))?,
            interval: r
                .interval
                .as_deref()
                .map(duration)
                .transpose()
                .map_err(|e| err(format!("{at}: rotate.interval: {e}")))?,
            packets: r.packets,
        };
        if out.rotate.size_bytes == Some(0) || out.rotate.packets == Some(0) {
            return Err(err(format!(
                "{at}: rotate: size and packets must be above 0"
            )));
        }
    }
    if let Some(m) = f.max_files {
        if m == 0 {
            return Err(err(format!("{at}: max_files must be at least 1")));
        }
        out.max_files = Some(m);
    }
    match (&f.on_finish, &f.hook, origin) {
        (Some(_), Some(_), _) => {
            return Err(err(format!(
                "{at}: on_finish and hook: give one (hook names a command of [hooks])"
            )));
        }
        (Some(_), None, Origin::Api) => {
            return Err(err(format!(
                "{at}: on_finish: commands cannot be set through the API (they would run as the collector, root); choose a hook by name with files.hook: {}",
                known_hooks(hooks)
            )));
        }
        (Some(c), None, Origin::File) => {
            out.on_finish = Some(c.clone());
            out.hook = None;
        }
        (None, Some(h), _) => {
            out.on_finish =
                Some(hook_command(h, hooks).map_err(|e| err(format!("{at}: hook: {e}")))?);
            out.hook = Some(h.clone());
        }
        (None, None, _) => {}
    }
    Ok(out)
}

fn source_match(m: &RawMatch) -> Result<SourceMatch, String> {
    let src = m
        .src
        .as_deref()
        .map(|s| cidr(s).map_err(|e| format!("src: {e}")))
        .transpose()?;
    let kind = m
        .kind
        .as_deref()
        .map(|k| k.parse::<Kind>().map_err(|e| format!("kind: {e}")))
        .transpose()?;
    let ids = match &m.id {
        None => None,
        Some(IdValue::One(n)) => Some(*n..=*n),
        Some(IdValue::Text(t)) => Some(id_range(t).map_err(|e| format!("id: {e}"))?),
    };
    Ok(SourceMatch { src, kind, ids })
}

/// `10.0.0.0/8`, or a bare address for a single host.
pub fn cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR"))
}

fn id_range(t: &str) -> Result<RangeInclusive<u32>, String> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{t:?} is not an id or a range like \"10-19\""))
    };
    match t.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!("{t:?}: range is backwards"));
            }
            Ok(a..=b)
        }
        None => parse(t).map(|n| n..=n),
    }
}

fn size(v: &SizeValue) -> Result<u64, String> {
    match v {
        SizeValue::Bytes(n) => Ok(*n),
        SizeValue::Text(t) => t
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| format!("{t:?} is not a size like \"100MiB\"")),
    }
}

pub fn duration(t: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(t)
        .map_err(|_| format!("{t:?} is not a duration like \"30s\", \"1h\""))?;
    if d.is_zero() {
        return Err(format!("{t:?}: must be above 0"));
    }
    Ok(d)
}

/// A count that must be above 0.
pub fn at_least_one(n: usize) -> Result<usize, String> {
    if n == 0 {
        return Err("must be above 0".into());
    }
    Ok(n)
}

/// Compiles `expr` as the sessions' filters are (within their limits), to refuse bad filters
/// up front.
pub fn compile_check(expr: &str) -> Result<(), String> {
    Filter::new(expr).map(drop).map_err(|e| e.to_string())
}

/// `expr` compiled; the error names the field (`at`) and the filter.
fn compiled(expr: &str, at: &str) -> Result<Filter, ConfigError> {
    Filter::new(expr).map_err(|e| err(format!("{at} {}: {e}", filter::shown(expr))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [collector]
        out = "/tmp/caps"
        allow = ["10.0.0.0/8", "2001:db8::1"]
        min_free_disk = "2GiB"

        [defaults.files]
        rotate = { size = "1GiB", interval = "1h" }
        max_files = 48

        [[session]]
        name = "web"
        filter = "tcp port 443"
        sources = [{ src = "10.1.0.0/16", kind = "erspan-ii", id = "10-19" }, { kind = "vxlan", id = 7 }]
        files = { dir = "/tmp/web", rotate = { size = "100MiB" }, on_finish = "gzip \"$1\"" }

        [[session]]
        name = "tap-only"
        enabled = false
        sources = [{ src = "192.168.0.5" }]
        files = false
        tap = { name = "tw-ids", netns = "monitor", filter = "not port 22", restore_vlan = false }
    "#;

    fn key(src: [u8; 4], kind: Kind, id: u32) -> SourceKey {
        SourceKey {
            src: IpAddr::from(src),
            kind,
            id,
        }
    }

    #[test]
    fn parses_the_example() {
        let c: Config = EXAMPLE.parse().unwrap();
        assert_eq!(c.collector.allow.len(), 2);
        assert_eq!(c.collector.min_free_disk_bytes, Some(2 << 30));
        let web = &c.sessions[0];
        let f = web.files.as_ref().unwrap();
        assert_eq!(f.rotate.size_bytes, Some(100 << 20));
        // Only what the session sets overrides the defaults: the interval is replaced too,
        // because `rotate` is one value.
        assert_eq!(f.rotate.interval, None);
        assert_eq!(f.max_files, Some(48));
        assert_eq!(f.dir.as_deref(), Some(Path::new("/tmp/web")));
        assert!(!c.sessions[1].enabled);
        assert_eq!(c.sessions[1].files, None);
        let tap = c.sessions[1].tap.as_ref().unwrap();
        assert_eq!(
            (tap.name.as_str(), tap.netns.as_deref(), tap.restore_vlan),
            ("tw-ids", Some("monitor"), false)
        );
        assert_eq!(c.sessions[0].tap, None);
    }

    #[test]
    fn limits_are_read_and_checked() {
        let c: Config =
            "[collector]\nmax_sources = 1000\nmax_auto_sessions = 0\nidle_timeout = \"90s\"\n"
                .parse()
                .unwrap();
        assert_eq!(
            c.collector.limits,
            LimitsConfig {
                max_sources: Some(1000),
                max_auto_sessions: Some(0),
                idle_timeout: Some(Duration::from_secs(90)),
            }
        );
        let none: Config = "".parse().unwrap();
        assert_eq!(none.collector.limits, LimitsConfig::default());
        for (text, want) in [
            (
                "max_sources = 0",
                "[collector] max_sources: must be above 0",
            ),
            (
                "idle_timeout = \"soon\"",
                "[collector] idle_timeout: \"soon\" is not a duration",
            ),
            ("max_auto_sessions = -1", "max_auto_sessions"),
        ] {
            let e = format!("[collector]\n{text}\n")
                .parse::<Config>()
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn shipped_example_parses() {
        let c: Config = include_str!("../../dist/collector.toml").parse().unwrap();
        assert_eq!(c.sessions.len(), 4);
        assert_eq!(
            c.sessions[0].filter.as_ref().map(Filter::expr),
            Some("tcp port 80 or tcp port 443")
        );
        let ids = &c.sessions[1];
        assert!(ids.files.is_none());
        let tap = ids.tap.as_ref().unwrap();
        assert_eq!(
            (tap.name.as_str(), tap.netns.as_deref()),
            ("ids0", Some("ids"))
        );
        assert_eq!(
            tap.filter.as_ref().map(Filter::expr),
            Some("not tcp port 22")
        );
    }

    #[test]
    fn matching() {
        let c: Config = EXAMPLE.parse().unwrap();
        assert_eq!(
            c.session_for(&key([10, 1, 2, 3], Kind::ErspanII, 12)),
            Some(0)
        );
        assert_eq!(c.session_for(&key([10, 1, 2, 3], Kind::ErspanII, 20)), None);
        assert_eq!(
            c.session_for(&key([10, 1, 2, 3], Kind::ErspanIII, 12)),
            None
        );
        assert_eq!(c.session_for(&key([1, 2, 3, 4], Kind::Vxlan, 7)), Some(0));
        assert_eq!(c.session_for(&key([192, 168, 0, 5], Kind::Gre, 0)), Some(1));
        let mapped = SourceKey {
            src: "::ffff:192.168.0.5".parse().unwrap(),
            kind: Kind::Gre,
            id: 0,
        };
        assert_eq!(c.session_for(&mapped), Some(1));
    }

    #[test]
    fn errors_name_the_session_and_field() {
        let cases = [
            (
                "[[session]]\nname = \"a\"\nsources = [{ kind = \"erspan-iv\" }]",
                "session \"a\": sources[0]: kind",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ src = \"10.0.0/8\" }]",
                "session \"a\": sources[0]: src",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = \"9-3\" }]",
                "backwards",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\nfilter = \"tcp port\"",
                "session \"a\": filter",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\nfiles = { rotate = { size = \"big\" } }",
                "rotate.size",
            ),
            (
                "[[session]]\nname = \"a/b\"\nsources = [{ id = 1 }]",
                "name",
            ),
            ("[[session]]\nname = \"a\"\nsources = []", "at least one"),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\n[[session]]\nname = \"a\"\nsources = [{ id = 2 }]",
                "defined twice",
            ),
            ("[collector]\nouts = \"x\"", "unknown field"),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\nfiles = { format = \"cap\" }",
                "format",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\ntap = \"much-too-long-name\"",
                "tap",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\ntap = \"t\"\n[[session]]\nname = \"b\"\nsources = [{ id = 2 }]\ntap = \"t\"",
                "used by another",
            ),
        ];
        for (text, needle) in cases {
            let e = text.parse::<Config>().unwrap_err();
            assert!(e.0.contains(needle), "{text:?} gave {e}");
        }
    }

    /// The command line's file flags replace `[defaults.files]` field by field, and so reach
    /// every session that does not set the field itself; what a session sets wins.
    #[test]
    fn file_flags_override_the_defaults_but_not_what_a_session_sets() {
        let text = r#"
            [defaults.files]
            format = "pcap"
            rotate = { size = "1GiB", interval = "1h" }
            max_files = 48
            on_finish = "true"

            [[session]]
            name = "inherits"
            sources = [{ id = 1 }]

            [[session]]
            name = "all-own"
            sources = [{ id = 2 }]
            files = { dir = "/tmp/own", format = "pcap-ns", rotate = { packets = 5 }, max_files = 3, on_finish = "gzip \"$1\"" }

            [[session]]
            name = "some-own"
            sources = [{ id = 3 }]
            files = { max_files = 7 }

            [[session]]
            name = "files-true"
            sources = [{ id = 4 }]
            files = true

            [[session]]
            name = "no-files"
            sources = [{ id = 5 }]
            files = false
        "#;
        let flags = FileFlags {
            format: Some(Format::Pcapng),
            rotate_size_bytes: Some(100 << 20),
            rotate_packets: Some(10),
            max_files: Some(2),
            on_finish: Some("echo \"$1\"".into()),
            ..FileFlags::default()
        };
        let c = Config::parse_with(text, &flags).unwrap();
        let files = |name: &str| {
            c.sessions
                .iter()
                .find(|s| s.name == name)
                .unwrap()
                .files
                .clone()
        };
        let defaults = FilesConfig {
            dir: None,
            format: Format::Pcapng,
            rotate: RotatePolicy {
                size_bytes: Some(100 << 20),
                duration: None,
                // Not given as a flag: [defaults.files]'s stays.
                interval: Some(Duration::from_secs(3600)),
                packets: Some(10),
            },
            max_files: Some(2),
            on_finish: Some("echo \"$1\"".into()),
            hook: None,
        };
        assert_eq!(c.collector.default_files, defaults);
        assert_eq!(files("inherits").as_ref(), Some(&defaults));
        assert_eq!(files("files-true").as_ref(), Some(&defaults));
        assert_eq!(files("no-files"), None);
        assert_eq!(
            files("some-own"),
            Some(FilesConfig {
                max_files: Some(7),
                ..defaults.clone()
            })
        );
        assert_eq!(
            files("all-own"),
            Some(FilesConfig {
                dir: Some(PathBuf::from("/tmp/own")),
                format: Format::Pcap { nanos: true },
                // `rotate` is one field: the session's replaces the flags' and the defaults'.
                rotate: RotatePolicy {
                    packets: Some(5),
                    ..RotatePolicy::default()
                },
                max_files: Some(3),
                on_finish: Some("gzip \"$1\"".into()),
                hook: None,
            })
        );

        // Without flags, as before: [defaults.files] alone.
        let plain: Config = text.parse().unwrap();
        assert_eq!(
            plain.collector.default_files.format,
            Format::Pcap { nanos: false }
        );
        assert_eq!(plain.collector.default_files.rotate.packets, None);
        assert_eq!(files("inherits").map(|f| f.max_files), Some(Some(2)));
        // `--rotate-size 0` turns rotation by size off.
        let off = FileFlags {
            rotate_size_bytes: Some(0),
            ..FileFlags::default()
        };
        let c = Config::parse_with(text, &off).unwrap();
        assert_eq!(
            c.sessions[0].files.as_ref().unwrap().rotate.size_bytes,
            None
        );
        assert_eq!(
            c.sessions[0].files.as_ref().unwrap().rotate.interval,
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn rotation_policy() {
        let h = Duration::from_secs(3600);
        let p = RotatePolicy {
            size_bytes: Some(1000),
            duration: None,
            interval: Some(h),
            packets: Some(10),
        };
        let t0 = 1_700_000_000_000_000_000u64; // 22:13:20 UTC
        assert_eq!(p.due(t0, 0, 0, t0), None);
        assert_eq!(p.due(t0, 1000, 0, t0), Some(RotateReason::Size));
        assert_eq!(p.due(t0, 0, 10, t0), Some(RotateReason::Packets));
        // On the hour: 23:00:00 UTC, not an hour after opening.
        let boundary = next_boundary_ns(t0, h);
        assert_eq!(boundary, 1_700_002_800_000_000_000);
        assert_eq!(p.due(t0, 0, 0, boundary - 1), None);
        assert_eq!(p.due(t0, 0, 0, boundary), Some(RotateReason::Interval));
        let d = RotatePolicy {
            duration: Some(Duration::from_secs(60)),
            ..RotatePolicy::default()
        };
        assert_eq!(d.due(t0, 0, 0, t0 + 59_999_999_999), None);
        assert_eq!(
            d.due(t0, 0, 0, t0 + 60_000_000_000),
            Some(RotateReason::Duration)
        );
    }

    /// Hooks are commands the configuration file names; sessions of the file may run a
    /// literal command or name a hook, `[defaults.files]` too.
    #[test]
    fn the_file_names_hooks_and_keeps_its_literal_commands() {
        let c: Config = r#"
            [defaults.files]
            hook = "compress"
            [hooks]
            compress = "gzip -9 \"$1\""
            upload = "upload.sh"
            [[session]]
            name = "a"
            sources = [{ id = 1 }]
            [[session]]
            name = "b"
            sources = [{ id = 2 }]
            files = { on_finish = "xz \"$1\"" }
            [[session]]
            name = "c"
            sources = [{ id = 3 }]
            files = { hook = "upload", dir = "/srv/c" }
        "#
        .parse()
        .unwrap();
        let f = |i: usize| c.sessions[i].files.clone().unwrap();
        assert_eq!(
            (f(0).on_finish.as_deref(), f(0).hook.as_deref()),
            (Some("gzip -9 \"$1\""), Some("compress"))
        );
        assert_eq!(
            (f(1).on_finish.as_deref(), f(1).hook.as_deref()),
            (Some("xz \"$1\""), None)
        );
        assert_eq!(
            (f(2).on_finish.as_deref(), f(2).dir.as_deref()),
            (Some("upload.sh"), Some(Path::new("/srv/c")))
        );
        for (text, needle) in [
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\nfiles = { hook = \"zip\" }\n[hooks]\nx = \"y\"",
                "files: hook: no hook named \"zip\"; the collector's configuration file defines x",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\nfiles = { hook = \"x\", on_finish = \"y\" }\n[hooks]\nx = \"y\"",
                "give one",
            ),
            ("[hooks]\n\"a b\" = \"true\"", "[hooks] \"a b\""),
            ("[hooks]\nx = \" \"", "empty"),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\nfiles = { dir = \"../elsewhere\" }",
                "session \"a\": files: dir: \"../elsewhere\" climbs out",
            ),
            (
                "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\ntap = { name = \"t\", netns = \"..\" }",
                "tap.netns",
            ),
        ] {
            let e = text.parse::<Config>().unwrap_err();
            assert!(e.0.contains(needle), "{text:?} gave {e}");
        }
        // The file may name a namespace by path (root's choice).
        let c: Config = "[[session]]\nname = \"a\"\nsources = [{ id = 1 }]\ntap = { name = \"t\", netns = \"/run/netns/x\" }"
            .parse()
            .unwrap();
        assert_eq!(
            c.sessions[0].tap.as_ref().unwrap().netns.as_deref(),
            Some("/run/netns/x")
        );
    }

    fn api(
        files: serde_json::Value,
        tap: Option<serde_json::Value>,
    ) -> Result<SessionConfig, ConfigError> {
        let hooks: BTreeMap<String, String> = [
            ("compress".to_string(), "gzip -9 \"$1\"".to_string()),
            ("upload".to_string(), "upload.sh".to_string()),
        ]
        .into();
        api_session(
            "web",
            true,
            vec![],
            None,
            Some(&files),
            tap.as_ref(),
            &Defaults {
                files: &FilesConfig::default(),
                hooks: &hooks,
                origin: Origin::Api,
            },
        )
    }

    /// A session from the API chooses a hook by name, never a command, and a directory beneath
    /// `out`, never a path of its own; its TAP's namespace is a name.
    #[test]
    fn api_sessions_run_no_command_and_name_no_path() {
        use serde_json::json;
        let s = api(json!({ "hook": "compress", "dir": "web/in" }), None).unwrap();
        let f = s.files.unwrap();
        assert_eq!(f.on_finish.as_deref(), Some("gzip -9 \"$1\""));
        assert_eq!(f.hook.as_deref(), Some("compress"));
        assert_eq!(f.dir.as_deref(), Some(Path::new("web/in")));
        for (files, needle) in [
            (
                json!({ "on_finish": "touch /tmp/pwned" }),
                "files: on_finish: commands cannot be set through the API (they would run as the collector, root); choose a hook by name with files.hook: the collector's configuration file defines compress, upload",
            ),
            (
                json!({ "on_finish": "compress" }),
                "commands cannot be set through the API",
            ),
            (
                json!({ "hook": "zip" }),
                "files: hook: no hook named \"zip\"; the collector's configuration file defines compress, upload",
            ),
            (json!({ "dir": "/etc" }), "files: dir: \"/etc\" is absolute"),
            (json!({ "dir": "../x" }), "files: dir: \"../x\" climbs out"),
            (json!({ "dir": "a/../../x" }), "climbs out"),
            (json!({ "dir": "" }), "empty"),
        ] {
            let e = api(files.clone(), None).unwrap_err();
            assert!(e.0.contains(needle), "{files}: {e}");
        }
        let ok = api(json!({}), Some(json!({ "name": "t0", "netns": "ids" }))).unwrap();
        assert_eq!(ok.tap.unwrap().netns.as_deref(), Some("ids"));
        for netns in ["/proc/1/ns/net", "../../proc/1/ns/net", "a/b", "..", ""] {
            let e = api(json!({}), Some(json!({ "name": "t0", "netns": netns }))).unwrap_err();
            assert!(e.0.contains("tap.netns:"), "{netns}: {e}");
        }
        let e = api(
            json!({}),
            Some(json!({ "name": "t0", "netns": "/proc/1/ns/net" })),
        )
        .unwrap_err();
        assert!(
            e.0.contains("is a path: give the name of a network namespace"),
            "{e}"
        );
    }

    /// The API's hooks are looked up in the file being merged: a reload changes their command,
    /// and one that drops a hook in use is refused.
    #[test]
    fn merging_looks_the_apis_hooks_up_again() {
        use serde_json::json;
        let s = api(json!({ "hook": "compress" }), None).unwrap();
        let mut file = Config::default();
        file.hooks.insert("compress".into(), "xz \"$1\"".into());
        let m = merged(&file, std::slice::from_ref(&s)).unwrap();
        assert_eq!(
            m.sessions[0].files.as_ref().unwrap().on_finish.as_deref(),
            Some("xz \"$1\"")
        );
        let e = merged(&Config::default(), &[s]).unwrap_err();
        assert!(
            e.0.contains("session \"web\": files.hook: no hook named \"compress\"; the collector's configuration file defines none"),
            "{e}"
        );
    }
}
