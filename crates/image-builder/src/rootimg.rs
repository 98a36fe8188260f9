//! The read-only root image: erofs (lz4hc) followed by its dm-verity hash tree.

use crate::BuildError;
use host_tools::tools;
use std::path::Path;
use update_package::Verity;
use uuid::Uuid;

pub const BLOCK: u64 = 4096;

/// Build `out` = erofs(tree) padded to 4 KiB, then the verity hash tree (no superblock).
/// Every input that could vary (file times, filesystem UUID, salt) is fixed.
pub fn build_root_image(
    tree: &Path,
    out: &Path,
    fs_uuid: Uuid,
    salt: &[u8],
) -> Result<Verity, BuildError> {
    let mut cmd = tools::MKFS_EROFS.command()?;
    cmd.arg("-zlz4hc")
        .arg("-T0")
        .arg(format!("-U{fs_uuid}"))
        .arg("--quiet")
        .arg(out)
        .arg(tree);
    host_tools::run(&mut cmd, "build the erofs root filesystem")?;

    let len = std::fs::metadata(out)
        .map_err(|e| BuildError::io("reading size of", out, e))?
        .len();
    let data_len = len.div_ceil(BLOCK) * BLOCK;
    if data_len != len {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(|e| BuildError::io("opening", out, e))?;
        f.set_len(data_len)
            .map_err(|e| BuildError::io("padding", out, e))?;
    }
    let salt_hex = hex::encode(salt);
    let mut cmd = tools::VERITYSETUP.command()?;
    cmd.arg("format")
        .arg("--no-superblock")
        .arg("--hash=sha256")
        .arg("--data-block-size=4096")
        .arg("--hash-block-size=4096")
        .arg(format!("--data-blocks={}", data_len / BLOCK))
        .arg(format!("--hash-offset={data_len}"))
        .arg(format!("--salt={salt_hex}"))
        .arg(out)
        .arg(out);
    let text = host_tools::run(&mut cmd, "compute the dm-verity hash tree")?;
    let root_hash = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Root hash:")
                .and_then(|h| h.trim().parse().ok())
        })
        .ok_or_else(|| BuildError::Invalid(format!("veritysetup printed no root hash: {text}")))?;
    Ok(Verity {
        root_hash,
        salt: salt_hex,
        hash_algorithm: "sha256".into(),
        data_block_size: BLOCK as u32,
        hash_block_size: BLOCK as u32,
        data_blocks: data_len / BLOCK,
        hash_offset: data_len,
    })
}

/// `veritysetup verify` of a root image (used by tests and `verify-build`).
pub fn verify_root_image(img: &Path, v: &Verity) -> Result<(), BuildError> {
    let mut cmd = tools::VERITYSETUP.command()?;
    cmd.arg("verify")
        .arg("--no-superblock")
        .arg(format!("--hash={}", v.hash_algorithm))
        .arg(format!("--data-block-size={}", v.data_block_size))
        .arg(format!("--hash-block-size={}", v.hash_block_size))
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--hash-offset={}", v.hash_offset))
        .arg(format!("--salt={}", v.salt))
        .arg(img)
        .arg(img)
        .arg(v.root_hash.as_str());
    host_tools::run(&mut cmd, "verify the root image against its root hash")?;
    Ok(())
}
