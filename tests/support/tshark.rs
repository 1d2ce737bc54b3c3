//! tshark as the oracle: its JSON decode (`-T json -x --no-duplicate-keys`) of a capture, with
//! helpers for protocols that occur more than once (outer and inner headers).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{require, run_ok};

/// The `layers` object of every packet of `path`.
pub fn packets(path: &Path) -> Vec<Value> {
    require("tshark");
    let out = run_ok(Command::new("tshark").arg("-r").arg(path).args([
        "-T",
        "json",
        "-x",
        "--no-duplicate-keys",
    ]));
    let v: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("tshark JSON for {}: {e}", path.display()));
    v.as_array()
        .map(|a| a.iter().map(|p| p["_source"]["layers"].clone()).collect())
        .unwrap_or_default()
}

/// Packets of `path` in which tshark, with IPv4 checksum checking on, finds a bad IPv4 header
/// checksum, a bad GRE checksum, or anything malformed: one summary line each, none when all
/// are good.
pub fn bad_checksums(path: &Path) -> Vec<String> {
    require("tshark");
    run_ok(Command::new("tshark").arg("-r").arg(path).args([
        "-o",
        "ip.check_checksum:TRUE",
        "-Y",
        "ip.checksum.status == 0 || gre.checksum.status == 0 || _ws.malformed",
    ]))
    .lines()
    .map(String::from)
    .collect()
}

/// `-T fields` of every packet of `path`: one row per packet, one column per field.
pub fn fields(path: &Path, fields: &[&str]) -> Vec<Vec<String>> {
    require("tshark");
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(path)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    run_ok(&mut cmd)
        .lines()
        .map(|l| l.split('|').map(String::from).collect())
        .collect()
}

/// A protocol's occurrences: a single object, or an array when it occurs several times.
pub fn all(layers: &Value, key: &str) -> Vec<Value> {
    match layers.get(key) {
        None => Vec::new(),
        Some(Value::Array(a))
            if key.ends_with("_raw") && !a.first().is_some_and(Value::is_array) =>
        {
            vec![Value::Array(a.clone())]
        }
        Some(Value::Array(a)) => a.clone(),
        Some(v) => vec![v.clone()],
    }
}

/// A `*_raw` entry: [hex, offset, length, bitmask, type].
#[derive(Debug, Clone)]
pub struct Raw {
    pub bytes: Vec<u8>,
    pub offset: usize,
    pub len: usize,
}

pub fn raws(layers: &Value, proto: &str) -> Vec<Raw> {
    all(layers, &format!("{proto}_raw"))
        .iter()
        .filter_map(|r| {
            let a = r.as_array()?;
            Some(Raw {
                bytes: hex::decode(a.first()?.as_str()?).ok()?,
                offset: usize::try_from(a.get(1)?.as_u64()?).ok()?,
                len: usize::try_from(a.get(2)?.as_u64()?).ok()?,
            })
        })
        .collect()
}

/// The whole frame's bytes.
pub fn frame_bytes(layers: &Value) -> Vec<u8> {
    raws(layers, "frame")
        .first()
        .map(|r| r.bytes.clone())
        .unwrap_or_default()
}

/// The first value of `field` in the first occurrence of `proto` that has it.
pub fn field(layers: &Value, proto: &str, field: &str) -> Option<String> {
    all(layers, proto).iter().find_map(|p| find_field(p, field))
}

/// `field` of the `n`th occurrence of `proto`.
pub fn field_nth(layers: &Value, proto: &str, n: usize, field: &str) -> Option<String> {
    all(layers, proto).get(n).and_then(|p| find_field(p, field))
}

/// Searches an object and its `*_tree` children for `field`.
fn find_field(v: &Value, field: &str) -> Option<String> {
    let obj = v.as_object()?;
    if let Some(x) = obj.get(field) {
        return match x {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => a.first().and_then(|s| s.as_str()).map(String::from),
            other => Some(other.to_string()),
        };
    }
    obj.values()
        .filter(|c| c.is_object())
        .find_map(|c| find_field(c, field))
}

/// Every value of `field` anywhere under `v` (for lists such as `ip.fragment`).
pub fn field_values(v: &Value, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    collect(v, field, &mut out);
    out
}

fn collect(v: &Value, field: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == field {
                    match x {
                        Value::String(s) => out.push(s.clone()),
                        Value::Array(a) => {
                            out.extend(a.iter().filter_map(|s| s.as_str().map(String::from)))
                        }
                        _ => {}
                    }
                } else {
                    collect(x, field, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, field, out)),
        _ => {}
    }
}

/// Parses tshark's numbers: decimal or `0x` hex.
pub fn num(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap_or_else(|e| panic!("hex {s}: {e}")),
        None => s.parse().unwrap_or_else(|e| panic!("number {s}: {e}")),
    }
}

/// `frame.protocols` split on `:`.
pub fn protocols(layers: &Value) -> Vec<String> {
    field(layers, "frame", "frame.protocols")
        .map(|s| s.split(':').map(String::from).collect())
        .unwrap_or_default()
}
