//! Compiles the XDP program (`bpf/steer.c`) into a BPF object with clang, which `src/xdp.rs`
//! embeds. Needs only clang (Debian: `apt-get install clang`; `scripts/setup.sh` installs it):
//! the program includes no kernel or libbpf header. `CLANG` names another compiler.

use std::path::PathBuf;
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
        Err(e) => Err(format!(
            "cannot run {clang} ({e}): the XDP program needs clang to build \
             (Debian: apt-get install clang; scripts/setup.sh installs it)"
        )),
    }
}
