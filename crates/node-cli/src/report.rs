//! Printing an error for a person.

/// The error and its causes, each said once: many errors already include their cause in
/// their own message (`{what}: {source}`), and printing the chain would repeat it.
pub fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod report_tests {
    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("status port 1.2.3.4:5: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let inner = std::io::Error::other("address in use");
        let e = anyhow::Error::new(Outer { source: inner }).context("starting the orchestrator");
        assert_eq!(
            super::report(&e),
            "starting the orchestrator: status port 1.2.3.4:5: address in use"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(super::report(&plain), "outer: inner");
    }
}
