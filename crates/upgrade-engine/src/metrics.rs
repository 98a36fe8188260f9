//! Prometheus text-format metrics of the upgrade engine, and [`Exposition`], the writer
//! every icos daemon renders its metrics with (the HostOS agent and the orchestrator too).

use crate::{SlotState, Status};
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

/// Render a [`Status`] as Prometheus exposition text.
pub fn render(s: &Status) -> String {
    let mut o = Exposition::default();
    let kind = s.kind.as_str();
    o.single(
        "icos_upgrade_running_info",
        "gauge",
        "The slot and version this node runs (value 1).",
        &[
            ("kind", kind),
            ("slot", &s.current_slot.to_string()),
            ("version", s.current_version.as_deref().unwrap_or("")),
        ],
        1,
    );
    let name = "icos_upgrade_slot_state";
    o.family(
        name,
        "gauge",
        "State of each slot: 0 empty, 1 confirmed, 2 on trial, 3 bad.",
    );
    for sl in &s.slots {
        let v = match sl.state {
            SlotState::Empty => 0,
            SlotState::Confirmed => 1,
            SlotState::Trial { .. } => 2,
            SlotState::Bad => 3,
        };
        let slot = sl.slot.to_string();
        let labels = [
            ("kind", kind),
            ("slot", slot.as_str()),
            ("version", sl.version.as_deref().unwrap_or("")),
        ];
        o.sample(name, &labels, v);
    }
    let st = &s.state;
    let name = "icos_upgrade_last_install_success";
    o.family(
        name,
        "gauge",
        "1 if the last install succeeded, 0 if it failed, absent if none.",
    );
    if let Some(li) = &st.last_install {
        let slot = li.slot.to_string();
        let labels = [
            ("kind", kind),
            ("slot", slot.as_str()),
            ("version", li.version.as_deref().unwrap_or("")),
        ];
        o.sample(name, &labels, u8::from(li.ok));
        o.single(
            "icos_upgrade_last_install_timestamp_seconds",
            "gauge",
            "When the last install ended.",
            &[("kind", kind)],
            li.unix,
        );
    }
    o.single(
        "icos_upgrade_rollbacks_total",
        "counter",
        "Rollbacks on this node (automatic and manual).",
        &[("kind", kind)],
        st.rollback_count,
    );
    o.single(
        "icos_upgrade_pending",
        "gauge",
        "1 while a new version is on trial.",
        &[("kind", kind)],
        u8::from(st.pending.is_some()),
    );
    o.single(
        "icos_upgrade_interrupted",
        "gauge",
        "1 if an operation was interrupted (power cut, crash).",
        &[("kind", kind)],
        u8::from(st.in_progress.is_some()),
    );
    o.finish()
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
