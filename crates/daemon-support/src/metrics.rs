//! Prometheus text exposition, written by every icos daemon: each renders one snapshot of
//! its status per scrape, which needs no registry of live metric objects.

use std::fmt::{Display, Write};

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition, built one family at a time. Label values are escaped, so a
/// version string from a hostile guest cannot forge samples.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// Start a family: its `# HELP` and `# TYPE` lines (`kind`: gauge, counter).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    /// A family with a single sample.
    pub fn single(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.family(name, kind, help).sample(name, labels, value)
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_and_escaped_labels() {
        let mut o = Exposition::default();
        o.single("up", "gauge", "1 when up.", &[], 1);
        let name = "info";
        o.family(name, "gauge", "Versions.");
        // A hostile version string stays inside its label value.
        o.sample(name, &[("version", "1\"} 9\nforged 1"), ("slot", "A")], 1);
        assert_eq!(
            o.finish(),
            "# HELP up 1 when up.\n# TYPE up gauge\nup 1\n\
             # HELP info Versions.\n# TYPE info gauge\n\
             info{version=\"1\\\"} 9\\nforged 1\",slot=\"A\"} 1\n"
        );
    }
}
