//! Prometheus text exposition (format 0.0.4), written from a snapshot of counters: the
//! collector's and the probe's `GET /metrics`.
//!
//! Both keep their counters in their own structures (the hot paths count in plain integers and
//! publish a snapshot once a second), so a registry of metric objects would only duplicate
//! them; this writer renders what a snapshot already holds, and escapes every label value.

use std::fmt::{Display, Write as _};

/// The `Content-Type` of the text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// The text being written: families, each a `# HELP` and `# TYPE` line, then its samples.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// Starts the family `name` (its full name, prefix included).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Text {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.name()
        );
        self
    }

    /// One sample: `name{label="value",...} value`, or `name value` without labels.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Text {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    pub fn into_string(self) -> String {
        self.out
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_escaping() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn families_and_samples() {
        let mut t = Text::new();
        t.family("tw_up_seconds", Kind::Gauge, "Seconds up.")
            .sample("tw_up_seconds", &[], 1.5);
        t.family("tw_packets_total", Kind::Counter, "Packets.")
            .sample(
                "tw_packets_total",
                &[("session", "a\"b"), ("reason", "filter")],
                7u64,
            );
        assert_eq!(
            t.into_string(),
            "# HELP tw_up_seconds Seconds up.\n# TYPE tw_up_seconds gauge\ntw_up_seconds 1.5\n\
             # HELP tw_packets_total Packets.\n# TYPE tw_packets_total counter\n\
             tw_packets_total{session=\"a\\\"b\",reason=\"filter\"} 7\n"
        );
    }
}
