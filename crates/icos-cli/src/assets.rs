//! `icos canister http` and `icos canister upload`: the HTTP gateway protocol from the
//! command line. A page is fetched with `http_request` (a query, its signature checked by
//! ic-agent) and shown only if DFINITY's response verification accepts it against the
//! network's root key, as a gateway would; files are uploaded through the asset canister's
//! `put` method (see `canisters/assets.c`).

use anyhow::{bail, Context, Result};
use candid::Encode;
use ic_agent::Agent;
use ic_principal::Principal;
use std::path::{Path, PathBuf};

/// The asset canister takes bodies up to this size, in pieces of `PIECE` (one message each,
/// well inside the canister's 1 MiB per message, whose hashing must fit one message's
/// instruction limit).
const MAX_BODY: u64 = 64 << 20;
const PIECE: usize = 512 << 10;

/// A page whose body verified.
pub struct Page {
    pub page: canister_http::Fetched,
    /// The first bytes of the SHA-256 of the root key it verified against, for the reader
    /// to compare with the network's.
    pub root_key_hash: String,
}

/// The page, all of it: a streamed body is gathered and checked whole before anything is
/// shown.
pub async fn http_get(agent: &Agent, canister: &Principal, path: &str) -> Result<Page> {
    let mut page = canister_http::fetch(
        agent,
        canister,
        canister_http::get(path),
        canister_http::Mode::Verified,
    )
    .await
    .with_context(|| {
        format!("fetching {path} from {canister} (nothing is shown unless it verifies)")
    })?;
    if let Some(rest) = page.rest.take() {
        let first = std::mem::take(&mut page.body);
        page.body = rest
            .collect(first, MAX_BODY as usize)
            .await
            .with_context(|| format!("fetching the rest of {path} from {canister}"))?;
    }
    Ok(Page {
        page,
        root_key_hash: short_hash(&agent.read_root_key()),
    })
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(bytes)[..8])
}

/// A long header value (a certificate) cut to something a terminal can show.
pub fn abbreviate(value: &str) -> String {
    match value.char_indices().nth(96) {
        Some((i, _)) => format!("{}... ({} bytes)", &value[..i], value.len()),
        None => value.to_string(),
    }
}

/// A file as uploaded.
pub struct Uploaded {
    pub path: String,
    pub size: u64,
    pub content_type: String,
}

/// Uploads every file under `dir`, served under `prefix`. Every file is checked before the
/// first is sent, so a directory with one file too large uploads nothing.
pub async fn upload(
    agent: &Agent,
    canister: &Principal,
    dir: &Path,
    prefix: &str,
) -> Result<Vec<Uploaded>> {
    if !prefix.starts_with('/') {
        bail!("--prefix {prefix:?} must start with '/'");
    }
    let mut files = Vec::new();
    walk(dir, &mut files).with_context(|| format!("reading {}", dir.display()))?;
    files.sort();
    if files.is_empty() {
        bail!("{} holds no files", dir.display());
    }
    let mut plan = Vec::new();
    for file in files {
        let size = std::fs::metadata(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        if size > MAX_BODY {
            bail!(
                "{} is {size} bytes; the asset canister takes at most {MAX_BODY} per file",
                file.display()
            );
        }
        let relative = file.strip_prefix(dir).expect("walk stays under dir");
        let parts: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let path = format!("{}/{}", prefix.trim_end_matches('/'), parts.join("/"));
        let content_type = content_type(&file);
        plan.push((file, path, size, content_type));
    }
    let mut done = Vec::new();
    for (file, path, size, content_type) in plan {
        let body = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let uploading = || format!("uploading {} as {path} to {canister}", file.display());
        // Every piece but the last is staged; the last publishes the whole body at once.
        let mut pieces: Vec<&[u8]> = body.chunks(PIECE).collect();
        let last = pieces.pop().unwrap_or_default();
        for piece in pieces {
            agent
                .update(canister, "put_chunk")
                .with_arg(
                    Encode!(&path, &serde_bytes::ByteBuf::from(piece))
                        .context("encoding put_chunk")?,
                )
                .call_and_wait()
                .await
                .with_context(uploading)?;
        }
        agent
            .update(canister, "put")
            .with_arg(
                Encode!(&path, &content_type, &serde_bytes::ByteBuf::from(last))
                    .context("encoding put")?,
            )
            .call_and_wait()
            .await
            .with_context(uploading)?;
        done.push(Uploaded {
            path,
            size,
            content_type,
        });
    }
    Ok(done)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// The type a file's name implies; text types say their charset, as browsers need.
fn content_type(file: &Path) -> String {
    let mime = mime_guess::from_path(file).first_or_octet_stream();
    match mime.type_() {
        mime_guess::mime::TEXT => format!("{mime}; charset=utf-8"),
        _ => mime.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_follow_the_name() {
        assert_eq!(
            content_type(Path::new("a/index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("logo.png")), "image/png");
        assert_eq!(
            content_type(Path::new("no-extension")),
            "application/octet-stream"
        );
    }

    #[test]
    fn long_values_are_cut_on_a_character() {
        assert_eq!(abbreviate("short"), "short");
        let long = "é".repeat(200);
        let cut = abbreviate(&long);
        assert!(cut.ends_with("... (400 bytes)"), "{cut}");
    }
}
