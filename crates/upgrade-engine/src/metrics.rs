//! Prometheus text-format metrics of the upgrade engine.

use crate::{SlotState, Status};
use std::fmt::Write;

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render a [`Status`] as Prometheus exposition text.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let kind = s.kind.as_str();
    let _ = writeln!(
        o,
        "# HELP icos_upgrade_running_info The slot and version this node runs (value 1)."
    );
    let _ = writeln!(o, "# TYPE icos_upgrade_running_info gauge");
    let _ = writeln!(
        o,
        "icos_upgrade_running_info{{kind=\"{kind}\",slot=\"{}\",version=\"{}\"}} 1",
        s.current_slot,
        escape(s.current_version.as_deref().unwrap_or(""))
    );
    let _ = writeln!(o, "# HELP icos_upgrade_slot_state State of each slot: 0 empty, 1 confirmed, 2 on trial, 3 bad.");
    let _ = writeln!(o, "# TYPE icos_upgrade_slot_state gauge");
    for sl in &s.slots {
        let v = match sl.state {
            SlotState::Empty => 0,
            SlotState::Confirmed => 1,
            SlotState::Trial { .. } => 2,
            SlotState::Bad => 3,
        };
        let _ = writeln!(
            o,
            "icos_upgrade_slot_state{{kind=\"{kind}\",slot=\"{}\",version=\"{}\"}} {v}",
            sl.slot,
            escape(sl.version.as_deref().unwrap_or(""))
        );
    }
    let st = &s.state;
    let _ = writeln!(o, "# HELP icos_upgrade_last_install_success 1 if the last install succeeded, 0 if it failed, absent if none.");
    let _ = writeln!(o, "# TYPE icos_upgrade_last_install_success gauge");
    if let Some(li) = &st.last_install {
        let _ = writeln!(
            o,
            "icos_upgrade_last_install_success{{kind=\"{kind}\",slot=\"{}\",version=\"{}\"}} {}",
            li.slot,
            escape(li.version.as_deref().unwrap_or("")),
            u8::from(li.ok)
        );
        let _ = writeln!(
            o,
            "# HELP icos_upgrade_last_install_timestamp_seconds When the last install ended."
        );
        let _ = writeln!(
            o,
            "# TYPE icos_upgrade_last_install_timestamp_seconds gauge"
        );
        let _ = writeln!(
            o,
            "icos_upgrade_last_install_timestamp_seconds{{kind=\"{kind}\"}} {}",
            li.unix
        );
    }
    let _ = writeln!(
        o,
        "# HELP icos_upgrade_rollbacks_total Rollbacks on this node (automatic and manual)."
    );
    let _ = writeln!(o, "# TYPE icos_upgrade_rollbacks_total counter");
    let _ = writeln!(
        o,
        "icos_upgrade_rollbacks_total{{kind=\"{kind}\"}} {}",
        st.rollback_count
    );
    let _ = writeln!(
        o,
        "# HELP icos_upgrade_pending 1 while a new version is on trial."
    );
    let _ = writeln!(o, "# TYPE icos_upgrade_pending gauge");
    let _ = writeln!(
        o,
        "icos_upgrade_pending{{kind=\"{kind}\"}} {}",
        u8::from(st.pending.is_some())
    );
    let _ = writeln!(
        o,
        "# HELP icos_upgrade_interrupted 1 if an operation was interrupted (power cut, crash)."
    );
    let _ = writeln!(o, "# TYPE icos_upgrade_interrupted gauge");
    let _ = writeln!(
        o,
        "icos_upgrade_interrupted{{kind=\"{kind}\"}} {}",
        u8::from(st.in_progress.is_some())
    );
    o
}
