//! The Debian base tree: debootstrap once per set of inputs, then reuse from the cache.

use crate::progress::Progress;
use crate::{BuildError, Package};
use host_tools::tools;
use image_recipe::Recipe;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A complete, cached Debian base.
pub struct Base {
    pub key: String,
    pub rootfs: PathBuf,
    pub packages: Vec<Package>,
    pub debootstrap_version: String,
    /// True when this build had to run debootstrap.
    pub fresh: bool,
}

pub fn debootstrap_version() -> Result<String, BuildError> {
    let mut cmd = tools::DEBOOTSTRAP.command()?;
    cmd.arg("--version");
    let out = host_tools::run(&mut cmd, "report its version")?;
    Ok(out
        .trim()
        .trim_start_matches("debootstrap")
        .trim()
        .to_string())
}

/// Read the installed packages of a tree with the host's dpkg-query (no chroot needed).
pub fn installed_packages(rootfs: &Path) -> Result<Vec<Package>, BuildError> {
    let mut cmd = Command::new("dpkg-query");
    cmd.arg(format!(
        "--admindir={}",
        rootfs.join("var/lib/dpkg").display()
    ))
    .arg("-W")
    .arg("-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n");
    let out = host_tools::run(&mut cmd, "list the packages of the base")?;
    let mut pkgs: Vec<Package> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            if !status.starts_with("ii") {
                return None;
            }
            Some(Package {
                name: f.next()?.to_string(),
                version: f.next()?.to_string(),
                arch: f.next()?.to_string(),
            })
        })
        .collect();
    pkgs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pkgs)
}

/// Return the cached base for the recipe, creating it with debootstrap if needed.
/// Concurrent builds serialize on a lock file, so only one debootstrap runs per key.
pub fn ensure_base(recipe: &Recipe, cache: &Path, progress: &Progress) -> Result<Base, BuildError> {
    let version = debootstrap_version()?;
    let key = recipe.base_key(&version);
    let base_dir = cache.join("base");
    std::fs::create_dir_all(&base_dir)
        .map_err(|e| BuildError::io("creating cache directory", &base_dir, e))?;
    let lock_path = base_dir.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| BuildError::io("creating lock", &lock_path, e))?;
    lock.lock()
        .map_err(|e| BuildError::io("locking", &lock_path, e))?;

    let dir = base_dir.join(&key);
    let rootfs = dir.join("rootfs");
    let complete = dir.join("complete");
    let mut fresh = false;
    if !complete.is_file() {
        fresh = true;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| BuildError::io("removing incomplete base", &dir, e))?;
        }
        let tmp = base_dir.join(format!("{key}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .map_err(|e| BuildError::io("removing stale base", &tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| BuildError::io("creating", &tmp, e))?;
        let result = run_debootstrap(recipe, &tmp.join("rootfs"), progress);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::write(tmp.join("complete"), format!("debootstrap {version}\n"))
            .map_err(|e| BuildError::io("marking base complete", &tmp, e))?;
        std::fs::rename(&tmp, &dir)
            .map_err(|e| BuildError::io("moving base into the cache", &dir, e))?;
    }
    let packages = installed_packages(&rootfs)?;
    drop(lock);
    Ok(Base {
        key,
        rootfs,
        packages,
        debootstrap_version: version,
        fresh,
    })
}

fn run_debootstrap(recipe: &Recipe, target: &Path, progress: &Progress) -> Result<(), BuildError> {
    let mut cmd = tools::DEBOOTSTRAP.command()?;
    cmd.arg(format!("--variant={}", recipe.base.variant))
        .arg(format!("--include={}", recipe.base.packages.join(",")))
        .arg(&recipe.base.suite)
        .arg(target)
        .arg(&recipe.base.mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| BuildError::io("starting debootstrap", target, e))?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.push(l);
        }
        lines
    });
    let stdout = child.stdout.take().expect("piped");
    let mut last_stage = String::new();
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        tracing::debug!("debootstrap: {line}");
        // Lines look like "I: Retrieving libc6 2.36-9"; show one line per stage.
        // Per-package lines (Retrieving/Validating/Extracting ...) are summarized by stage.
        if let Some(rest) = line.strip_prefix("I: ") {
            let stage = rest.split_whitespace().next().unwrap_or("").to_string();
            if stage != last_stage && !(stage == "Validating" && last_stage == "Retrieving") {
                let text = if rest.ends_with("...") || rest.ends_with('.') {
                    rest.to_string()
                } else {
                    format!("{stage} packages...")
                };
                progress.detail(&format!("debootstrap: {text}"));
            }
            if stage != "Validating" {
                last_stage = stage;
            }
        }
        tail.push(line);
        if tail.len() > 20 {
            tail.remove(0);
        }
    }
    let status = child
        .wait()
        .map_err(|e| BuildError::io("waiting for debootstrap", target, e))?;
    let err_lines = err_thread.join().unwrap_or_default();
    if !status.success() {
        let log =
            std::fs::read_to_string(target.join("debootstrap/debootstrap.log")).unwrap_or_default();
        let mut why: Vec<String> = err_lines
            .iter()
            .chain(tail.iter())
            .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
            .cloned()
            .collect();
        if why.is_empty() {
            why = log.lines().rev().take(5).map(str::to_string).collect();
            why.reverse();
        }
        return Err(BuildError::Debootstrap {
            suite: recipe.base.suite.clone(),
            mirror: recipe.base.mirror.clone(),
            detail: why.join(" | "),
        });
    }
    Ok(())
}
