//! A real terminal for UI tests: a tmux server of the test's own (its own socket), one session
//! whose pane stays after its command exits, read with `capture-pane`, driven with
//! `send-keys`. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::netns::poll_until;
use crate::require;

pub struct Tmux {
    socket: String,
    /// Where the wrapper shell writes the command's exit status.
    status: PathBuf,
}

impl Tmux {
    /// Runs `cmd` in a `width` x `height` pane; the socket and files live in `dir`.
    pub fn start(dir: &Path, tag: &str, width: u16, height: u16, cmd: &[&str]) -> Tmux {
        require("tmux");
        let conf = dir.join(format!("tmux-{tag}.conf"));
        std::fs::write(&conf, "set -g status off\nset -g remain-on-exit on\n")
            .expect("tmux config");
        let t = Tmux {
            socket: dir.join(format!("tmux-{tag}.sock")).display().to_string(),
            status: dir.join(format!("tmux-{tag}.status")),
        };
        let wrapper = format!("\"$@\"; echo $? > {}", t.status.display());
        let (w, h) = (width.to_string(), height.to_string());
        let conf = conf.display().to_string();
        let mut args = vec![
            "-f",
            &conf,
            "new-session",
            "-d",
            "-s",
            "main",
            "-x",
            &w,
            "-y",
            &h,
            "--",
            "sh",
            "-c",
            &wrapper,
            "sh",
        ];
        args.extend_from_slice(cmd);
        let out = t.tmux(&args);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-S", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    pub fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", "main"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A key by tmux name (`Enter`, `Escape`, `q`).
    pub fn key(&self, key: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "main", key])
                .status
                .success()
        );
    }

    /// Text typed as it is.
    pub fn type_text(&self, text: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "main", "-l", text])
                .status
                .success()
        );
    }

    /// The pid of the command the pane runs (the child of the wrapper shell; `ip netns exec`
    /// execs the command in place).
    pub fn command_pid(&self) -> u32 {
        let out = self.tmux(&["display-message", "-p", "-t", "main", "#{pane_pid}"]);
        let shell = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let out = Command::new("pgrep")
            .args(["-P", &shell])
            .output()
            .expect("pgrep");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no child of the pane's shell {shell}"))
    }

    /// Kills the server: the pane's terminal hangs up, as when an SSH session drops.
    pub fn hang_up(&self) {
        let _ = self.tmux(&["kill-server"]);
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let found = poll_until(timeout, || {
            last = self.screen();
            ok(&last).then_some(())
        });
        assert!(
            found.is_some(),
            "timed out after {timeout:?} waiting for {what}; screen:\n{last}"
        );
        last
    }

    /// The command's exit status once it ended, waiting up to `timeout`.
    pub fn wait_exit(&self, timeout: Duration) -> i32 {
        poll_until(timeout, || {
            std::fs::read_to_string(&self.status)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("still running after {timeout:?}:\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The screen line of a table row whose first word (after a `▸`/`▾` marker, or the `▶` of a
/// selected row) is `name`.
pub fn row<'a>(screen: &'a str, name: &str) -> Option<&'a str> {
    screen.lines().find(|l| {
        let l = l.trim_start_matches(['▸', '▾', '▶', ' ']);
        l.split_whitespace().next() == Some(name)
    })
}
