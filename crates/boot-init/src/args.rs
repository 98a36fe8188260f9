//! What the boot entry tells the initramfs (the `icos.*` kernel arguments written by
//! `update_package::boot_options`), checked before anything is touched.

use crate::InitError;
use uuid::Uuid;

/// The dm-verity parameters of the slot's root partition: data and hash tree share the
/// partition, 4 KiB blocks, SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityArgs {
    pub root_hash: String,
    pub data_blocks: u64,
    pub hash_offset: u64,
    pub salt: String,
}

impl VerityArgs {
    /// The kernel's verity table for `device` ("major:minor"), following
    /// Documentation/admin-guide/device-mapper/verity.rst. Any block that does not match the
    /// root hash panics the kernel: a node never runs on tampered data.
    pub fn table(&self, device: &str) -> String {
        format!(
            "0 {} verity 1 {device} {device} 4096 4096 {} {} sha256 {} {} 1 panic_on_corruption",
            self.data_blocks * 8,
            self.data_blocks,
            self.hash_offset / 4096,
            self.root_hash,
            self.salt
        )
    }
}

/// Everything the init needs from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// `icos.banner`: GUESTOS, HOSTOS or SETUPOS, the prefix of the console status lines.
    pub banner: String,
    /// `icos.root=PARTUUID=...`: the slot's root partition (erofs + hash tree).
    pub root: Uuid,
    pub verity: VerityArgs,
    /// `icos.var=PARTUUID=...`: the slot's /var; without it (SetupOS) /var is in memory.
    pub var: Option<Uuid>,
    /// `panic=`: seconds to wait before rebooting after a fatal error; 0 or absent waits
    /// forever (the kernel's meaning), negative reboots at once.
    pub panic_secs: Option<i64>,
    /// `init=`: what to hand over to (default `/sbin/init`, systemd).
    pub init: String,
    /// `icos.initdebug`: print each step with its time.
    pub debug: bool,
}

impl BootArgs {
    pub fn parse(cmdline: &str) -> Result<BootArgs, InitError> {
        let mut banner = None;
        let (mut root, mut var, mut roothash, mut verity) = (None, None, None, None);
        let mut panic_secs = None;
        let mut init = None;
        let mut debug = false;
        for arg in cmdline.split_whitespace() {
            let (key, value) = arg.split_once('=').unwrap_or((arg, ""));
            match key {
                "icos.banner" => banner = Some(value.to_string()),
                "icos.root" => root = Some(partuuid("icos.root", value)?),
                "icos.var" => var = Some(partuuid("icos.var", value)?),
                "icos.roothash" => roothash = Some(value.to_string()),
                "icos.verity" => verity = Some(value.to_string()),
                "icos.initdebug" => debug = true,
                "panic" => panic_secs = value.parse().ok(),
                "init" if !value.is_empty() => init = Some(value.to_string()),
                _ => {}
            }
        }
        let missing = |k: &str| InitError::Args(format!("the kernel command line lacks {k}"));
        let root_hash = roothash.ok_or_else(|| missing("icos.roothash"))?;
        if root_hash.len() != 64 || !root_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InitError::Args(format!(
                "icos.roothash={root_hash} is not a SHA-256 in hex"
            )));
        }
        let verity = verity.ok_or_else(|| missing("icos.verity"))?;
        let bad = || {
            InitError::Args(format!(
                "icos.verity={verity} is not <data blocks>:<hash offset>:<salt>"
            ))
        };
        let mut f = verity.splitn(3, ':');
        let (Some(blocks), Some(offset), Some(salt)) = (f.next(), f.next(), f.next()) else {
            return Err(bad());
        };
        let data_blocks: u64 = blocks.parse().map_err(|_| bad())?;
        let hash_offset: u64 = offset.parse().map_err(|_| bad())?;
        if data_blocks == 0
            || !hash_offset.is_multiple_of(4096)
            || hash_offset < data_blocks * 4096
            || salt.is_empty()
            || !salt.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        Ok(BootArgs {
            banner: banner.unwrap_or_else(|| "ICOS".into()),
            root: root.ok_or_else(|| missing("icos.root"))?,
            verity: VerityArgs {
                root_hash,
                data_blocks,
                hash_offset,
                salt: salt.to_string(),
            },
            var,
            panic_secs,
            init: init.unwrap_or_else(|| "/sbin/init".into()),
            debug,
        })
    }
}

fn partuuid(key: &str, value: &str) -> Result<Uuid, InitError> {
    value
        .strip_prefix("PARTUUID=")
        .and_then(|u| Uuid::parse_str(u).ok())
        .ok_or_else(|| InitError::Args(format!("{key}={value} is not PARTUUID=<uuid>")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "4f1b9d0c8e7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c";

    fn line(extra: &str) -> String {
        format!(
            "console=ttyS0 panic=10 root=/dev/mapper/root icos.banner=GUESTOS icos.slot=B \
             icos.root=PARTUUID=11d9efcc-d002-480a-b5ed-2538ddde49d4 \
             icos.roothash={HASH} icos.verity=1000:4096000:00ff {extra}"
        )
    }

    #[test]
    fn reads_what_the_boot_entry_writes() {
        let a = BootArgs::parse(&line(
            "icos.var=PARTUUID=def2ff9d-2d4c-4991-8535-8cd450d492a0",
        ))
        .unwrap();
        assert_eq!(a.banner, "GUESTOS");
        assert_eq!(a.root.to_string(), "11d9efcc-d002-480a-b5ed-2538ddde49d4");
        assert_eq!(
            a.var.map(|u| u.to_string()).as_deref(),
            Some("def2ff9d-2d4c-4991-8535-8cd450d492a0")
        );
        assert_eq!(
            (a.panic_secs, a.init.as_str(), a.debug),
            (Some(10), "/sbin/init", false)
        );
        assert_eq!(
            a.verity.table("254:3"),
            format!(
                "0 8000 verity 1 254:3 254:3 4096 4096 1000 1000 sha256 {HASH} 00ff 1 panic_on_corruption"
            )
        );
        let b = BootArgs::parse(&line("init=/bin/sh icos.initdebug")).unwrap();
        assert_eq!((b.var, b.init.as_str(), b.debug), (None, "/bin/sh", true));
    }

    #[test]
    fn refuses_a_command_line_it_cannot_trust_and_says_which_argument() {
        let cases = [
            (
                line("").replace("icos.roothash", "x"),
                "lacks icos.roothash",
            ),
            (line("").replace(HASH, "abc"), "not a SHA-256"),
            (
                line("").replace("1000:4096000:00ff", "1000:4096000"),
                "icos.verity=1000:4096000 is not",
            ),
            (
                line("").replace("1000:4096000:00ff", "1000:4096:00ff"),
                "is not <data blocks>",
            ),
            (
                line("").replace("1000:4096000:00ff", "1000:4096000:zz"),
                "is not <data blocks>",
            ),
            (
                line("").replace("PARTUUID=11d9", "UUID=11d9"),
                "icos.root=UUID",
            ),
            (
                line("").replace("icos.root=", "icos.rooot="),
                "lacks icos.root",
            ),
            (
                line("icos.var=/dev/vda4"),
                "icos.var=/dev/vda4 is not PARTUUID",
            ),
        ];
        for (cmdline, want) in cases {
            let e = BootArgs::parse(&cmdline).unwrap_err().to_string();
            assert!(e.contains(want), "{cmdline}: {e}");
        }
    }
}
