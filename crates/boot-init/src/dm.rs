//! Creating one read-only device-mapper device through the kernel's ioctl interface
//! (include/uapi/linux/dm-ioctl.h, interface version 4): create, load the table, resume.
//!
//! Written here rather than taken from a crate or `dmsetup`: the `devicemapper` crate
//! generates its bindings with bindgen (libclang at build time), and `dmsetup` would bring
//! libdevmapper and its dependencies into the initramfs. Three ioctls are all the init needs.

use crate::InitError;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `sizeof(struct dm_ioctl)`.
const DM_IOCTL_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
const TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_READONLY_FLAG: u32 = 1 << 0;

// Command numbers in the `0xfd` ioctl group.
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn request(nr: u8) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | nr as u64
}

/// One target line of a table: `start length type params` (in 512-byte sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    pub params: String,
}

impl Target {
    /// Parse a one-line table as `dmsetup` takes it.
    pub fn parse(line: &str) -> Result<Target, InitError> {
        let mut f = line.splitn(4, ' ');
        let bad = || InitError::Dm(format!("malformed device-mapper table `{line}`"));
        let start = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let length = f.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        let kind = f
            .next()
            .filter(|k| !k.is_empty() && k.len() < 16)
            .ok_or_else(bad)?;
        let params = f.next().unwrap_or("");
        Ok(Target {
            start,
            length,
            kind: kind.to_string(),
            params: params.to_string(),
        })
    }
}

/// The ioctl buffer: a `struct dm_ioctl` header, then (for a table load) one target spec
/// and its NUL-terminated parameters, padded to 8 bytes.
pub fn encode(name: &str, flags: u32, target: Option<&Target>) -> Result<Vec<u8>, InitError> {
    if name.is_empty() || name.len() >= DM_NAME_LEN || name.contains('/') {
        return Err(InitError::Dm(format!(
            "invalid device-mapper name `{name}`"
        )));
    }
    let mut buf = vec![0u8; DM_IOCTL_SIZE];
    if let Some(t) = target {
        let mut spec = vec![0u8; TARGET_SPEC_SIZE];
        spec[0..8].copy_from_slice(&t.start.to_ne_bytes());
        spec[8..16].copy_from_slice(&t.length.to_ne_bytes());
        spec[24..24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
        buf.extend_from_slice(&spec);
        buf.extend_from_slice(t.params.as_bytes());
        buf.push(0);
        while !buf.len().is_multiple_of(8) {
            buf.push(0);
        }
        let next = (buf.len() - DM_IOCTL_SIZE) as u32;
        buf[DM_IOCTL_SIZE + 20..DM_IOCTL_SIZE + 24].copy_from_slice(&next.to_ne_bytes());
    }
    let put =
        |buf: &mut Vec<u8>, at: usize, v: u32| buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    put(&mut buf, 0, 4); // interface version 4.0.0
    let size = buf.len() as u32;
    put(&mut buf, 12, size); // data_size
    put(&mut buf, 16, DM_IOCTL_SIZE as u32); // data_start
    put(&mut buf, 20, u32::from(target.is_some())); // target_count
    put(&mut buf, 28, flags);
    buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(buf)
}

/// The device number the kernel wrote back (`dev`, encoded as `huge_encode_dev`).
pub fn decode_dev(buf: &[u8]) -> (u32, u32) {
    let dev = u64::from_ne_bytes(buf[40..48].try_into().expect("8 bytes"));
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

fn call(ctl: &std::fs::File, nr: u8, buf: &mut [u8], what: &str) -> Result<(), InitError> {
    // SAFETY: `buf` is a properly laid out dm_ioctl of `data_size` bytes that stays alive
    // for the call; the kernel writes at most `data_size` bytes back.
    let rc = unsafe { libc::ioctl(ctl.as_raw_fd(), request(nr) as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(InitError::Dm(format!(
            "{what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Create the read-only device `name` with one target and make it live; returns its
/// (major, minor).
pub fn create_readonly(
    control: &Path,
    name: &str,
    target: &Target,
) -> Result<(u32, u32), InitError> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
        .map_err(|e| InitError::Dm(format!("opening {}: {e}", control.display())))?;
    let mut create = encode(name, 0, None)?;
    call(
        &ctl,
        DM_DEV_CREATE,
        &mut create,
        &format!("creating device {name}"),
    )?;
    let mut load = encode(name, DM_READONLY_FLAG, Some(target))?;
    call(
        &ctl,
        DM_TABLE_LOAD,
        &mut load,
        &format!(
            "loading the {} table of {name} (is its module loaded?)",
            target.kind
        ),
    )?;
    // DEV_SUSPEND without the suspend flag resumes: the loaded table becomes live.
    let mut resume = encode(name, 0, None)?;
    call(
        &ctl,
        DM_DEV_SUSPEND,
        &mut resume,
        &format!("activating {name}"),
    )?;
    Ok(decode_dev(&resume))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_header() {
        // Values of DM_DEV_CREATE, DM_DEV_SUSPEND and DM_TABLE_LOAD on x86_64.
        assert_eq!(request(DM_DEV_CREATE), 0xc138_fd03);
        assert_eq!(request(DM_DEV_SUSPEND), 0xc138_fd06);
        assert_eq!(request(DM_TABLE_LOAD), 0xc138_fd09);
    }

    #[test]
    fn a_table_load_is_laid_out_as_the_kernel_reads_it() {
        let t =
            Target::parse("0 8000 verity 1 254:3 254:3 4096 4096 1000 1000 sha256 ab cd").unwrap();
        assert_eq!((t.start, t.length, t.kind.as_str()), (0, 8000, "verity"));
        let b = encode("root", DM_READONLY_FLAG, Some(&t)).unwrap();
        let u32_at = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(b.len() % 8, 0);
        assert_eq!((u32_at(0), u32_at(4), u32_at(8)), (4, 0, 0));
        assert_eq!(u32_at(12) as usize, b.len());
        assert_eq!((u32_at(16), u32_at(20), u32_at(28)), (312, 1, 1));
        assert_eq!(&b[48..53], b"root\0");
        let spec = &b[312..];
        assert_eq!(u64::from_ne_bytes(spec[8..16].try_into().unwrap()), 8000);
        assert_eq!(&spec[24..31], b"verity\0");
        let params = &spec[40..];
        let end = params.iter().position(|&c| c == 0).unwrap();
        assert_eq!(&params[..end], t.params.as_bytes());
        assert_eq!(
            u32::from_ne_bytes(spec[20..24].try_into().unwrap()) as usize,
            spec.len()
        );
    }

    #[test]
    fn refuses_bad_names_and_tables() {
        assert!(encode("", 0, None).is_err());
        assert!(encode("a/b", 0, None).is_err());
        assert!(encode(&"x".repeat(128), 0, None).is_err());
        assert!(Target::parse("0 x verity").is_err());
        assert!(Target::parse("0 8").is_err());
        assert!(Target::parse("0 8 averyveryverylongtype p").is_err());
    }

    #[test]
    fn device_numbers_decode_like_the_kernel_encodes_them() {
        let mut b = vec![0u8; 312];
        // huge_encode_dev(MKDEV(254, 0x12345)) = (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)
        let dev: u64 = 0x45 | (254 << 8) | ((0x12345 & !0xff) << 12);
        b[40..48].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(decode_dev(&b), (254, 0x12345));
    }
}
