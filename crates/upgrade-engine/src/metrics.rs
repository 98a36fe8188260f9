//! Prometheus text-format metrics of the upgrade engine.

use crate::{SlotState, Status};
use daemon_support::metrics::Exposition;

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
