//! What is running: `/usr/lib/icos/release` (written by the image builder) and the slot the
//! boot loader chose (`icos.slot=` on the kernel command line). One format, one parser.

use disk_layout::Slot;
use std::fmt::Write;

/// Where the image builder puts the release file.
pub const RELEASE_FILE: &str = "/usr/lib/icos/release";

/// An image's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// guestos, hostos, setupos (or another recipe name).
    pub image: String,
    /// The console banner (e.g. GUESTOS).
    pub banner: String,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{RELEASE_FILE}: {0}")]
    Read(std::io::Error),
    #[error("release file: no `{0}=` line")]
    Missing(&'static str),
}

impl Release {
    /// Parse `KEY=value` lines; IMAGE and VERSION are required, BANNER defaults to the image
    /// name in capitals.
    pub fn parse(text: &str) -> Result<Release, ReleaseError> {
        let field = |key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.strip_prefix('='))
                    .map(|v| v.trim().to_string())
            })
        };
        let image = field("IMAGE").ok_or(ReleaseError::Missing("IMAGE"))?;
        let version = field("VERSION").ok_or(ReleaseError::Missing("VERSION"))?;
        let banner = field("BANNER").unwrap_or_else(|| image.to_uppercase());
        Ok(Release {
            image,
            banner,
            version,
        })
    }

    /// The release file's text (what the image builder writes).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "IMAGE={}", self.image);
        let _ = writeln!(s, "BANNER={}", self.banner);
        let _ = writeln!(s, "VERSION={}", self.version);
        s
    }

    /// The running system's release (an error on a machine that is not an icos image).
    pub fn running() -> Result<Release, ReleaseError> {
        Release::parse(&std::fs::read_to_string(RELEASE_FILE).map_err(ReleaseError::Read)?)
    }

    /// The running version if this is an `image` system.
    pub fn running_version_of(image: &str) -> Option<String> {
        Release::running()
            .ok()
            .filter(|r| r.image == image)
            .map(|r| r.version)
    }
}

/// The value of `key=` on a kernel command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// The slot the running system booted from (`icos.slot=` on `/proc/cmdline`).
pub fn running_slot() -> Option<Slot> {
    let c = std::fs::read_to_string("/proc/cmdline").ok()?;
    cmdline_value(&c, "icos.slot").and_then(Slot::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_files_roundtrip_and_name_what_is_missing() {
        let r = Release {
            image: "hostos".into(),
            banner: "HOSTOS".into(),
            version: "1.0.0".into(),
        };
        assert_eq!(Release::parse(&r.render()).unwrap(), r);
        let e = Release::parse("IMAGE=guestos\n").unwrap_err().to_string();
        assert!(e.contains("VERSION"), "{e}");
        // A key that only starts like another is not it.
        let e = Release::parse("IMAGE=x\nVERSIONS=2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("VERSION"), "{e}");
    }

    #[test]
    fn the_slot_comes_from_its_own_argument() {
        let c = "root=/dev/mapper/root icos.slotx=B icos.slot=A quiet";
        assert_eq!(cmdline_value(c, "icos.slot"), Some("A"));
        assert_eq!(cmdline_value(c, "icos.root"), None);
    }
}
