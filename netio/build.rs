//! Compiles the XDP program (`bpf/steer.c`) into a BPF object with clang, which `src/xdp.rs`
//! embeds. Needs only clang (Debian: `apt-get install clang`; `scripts/setup.sh` installs it):
//! the program includes no kernel or libbpf header. `CLANG` names another compiler.
//!
//! Without clang the crate still builds, with an empty object and a warning: `tapwire collect
//! --xdp` then refuses to start and says why (`xdp::available`). A clang that runs and fails
//! is an error.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() -> Result<(), String> {
    let src = "bpf/steer.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out_dir = std::env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?;
    let out = PathBuf::from(out_dir).join("steer.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let status = Command::new(&clang)
        .args([
            "-O2", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror", "-c", src, "-o",
        ])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{clang} failed to compile {src} ({s})")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => without_program(&clang, &out),
        Err(e) => Err(format!("cannot run {clang} to compile {src}: {e}")),
    }
}

/// No compiler: an empty object, a warning, and a rerun once something lands in PATH's
/// directories (clang installed later is picked up without `cargo clean`).
fn without_program(clang: &str, out: &Path) -> Result<(), String> {
    // Written only when it differs, so that a rerun with clang still missing rebuilds nothing.
    if std::fs::read(out).ok().is_none_or(|b| !b.is_empty()) {
        std::fs::write(out, b"").map_err(|e| format!("write {}: {e}", out.display()))?;
    }
    println!("cargo:rerun-if-env-changed=PATH");
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.is_absolute() && dir.is_dir() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
    }
    println!(
        "cargo:warning={clang} not found: tapwire is built without its XDP program and \
         `collect --xdp` will refuse to start (Debian: apt-get install clang; scripts/setup.sh \
         installs it)"
    );
    Ok(())
}
