//! Run the external Debian tools the image builder and VM runner rely on
//! (`debootstrap`, `mkfs.erofs`, `veritysetup`, `sgdisk`, `qemu-system-x86_64`, ...).
//!
//! Every tool is described by a [`Tool`]: its program name and the Debian package that
//! provides it, so a missing tool produces an error that says what to install. Running a
//! tool captures its stderr and puts the tail of it into the error, so a failed build says
//! what the tool itself complained about.
//!
//! ```no_run
//! use host_tools::{Tool, run};
//! let sgdisk = Tool::new("sgdisk", "gdisk");
//! let mut cmd = sgdisk.command().unwrap();
//! cmd.arg("--print").arg("disk.img");
//! let out = run(&mut cmd, "print the partition table").unwrap();
//! println!("{out}");
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors from locating or running an external tool.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("required tool `{tool}` is not installed (Debian package `{package}`); run scripts/setup.sh")]
    Missing { tool: String, package: String },
    #[error("could not start `{program}` to {purpose}: {source}")]
    Spawn {
        program: String,
        purpose: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` failed to {purpose} ({status}): {stderr}")]
    Failed {
        program: String,
        purpose: String,
        /// How it ended; some tools' exit codes mean something (`blkid`: 2 = nothing found).
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// An external program and the Debian package that ships it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

impl Tool {
    pub const fn new(program: &'static str, package: &'static str) -> Self {
        Tool { program, package }
    }

    /// Full path of the program, searched in `PATH` plus the sbin directories (tools like
    /// `sgdisk` live there and a non-root `PATH` often lacks them), or only in
    /// `ICOS_TOOL_PATH` when that is set.
    pub fn locate(&self) -> Result<PathBuf, ToolError> {
        find_in_path(self.program).ok_or_else(|| ToolError::Missing {
            tool: self.program.to_string(),
            package: self.package.to_string(),
        })
    }

    /// A [`Command`] for this tool, or a [`ToolError::Missing`] naming the package.
    pub fn command(&self) -> Result<Command, ToolError> {
        Ok(Command::new(self.locate()?))
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    // ICOS_TOOL_PATH replaces the search path entirely (unusual installs, tests).
    if let Some(p) = std::env::var_os("ICOS_TOOL_PATH") {
        return std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|p| is_executable(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The tools used across the project, in one place so the package hints stay consistent.
pub mod tools {
    use super::Tool;
    pub const DEBOOTSTRAP: Tool = Tool::new("debootstrap", "debootstrap");
    pub const MKFS_EROFS: Tool = Tool::new("mkfs.erofs", "erofs-utils");
    pub const VERITYSETUP: Tool = Tool::new("veritysetup", "cryptsetup-bin");
    pub const SGDISK: Tool = Tool::new("sgdisk", "gdisk");
    pub const CHROOT: Tool = Tool::new("chroot", "coreutils");
    pub const ZSTD: Tool = Tool::new("zstd", "zstd");
    pub const QEMU: Tool = Tool::new(
        "qemu-system-x86_64",
        "qemu-system-x86 (from bookworm-backports)",
    );
    pub const CPIO: Tool = Tool::new("cpio", "cpio");
    pub const MKE2FS: Tool = Tool::new("mke2fs", "e2fsprogs");
    pub const BUSYBOX: Tool = Tool::new("busybox", "busybox-static");
    /// The package mirror of the local network and the registry benchmark's baseline.
    pub const NGINX: Tool = Tool::new("nginx", "nginx-light");
}

fn describe(cmd: &Command) -> String {
    let prog = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_else(|| OsStr::new("?"))
        .to_string_lossy()
        .into_owned();
    prog
}

/// Keep the last lines of a tool's stderr: enough to show the cause, short enough for a log line.
fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join(" | ")
}

/// Run a command to completion, capturing stdout (returned) and stderr (into the error).
pub fn run(cmd: &mut Command, purpose: &str) -> Result<String, ToolError> {
    let program = describe(cmd);
    tracing::debug!(?cmd, "running {program} to {purpose}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            program: program.clone(),
            purpose: purpose.to_string(),
            source,
        })?;
    finish(program, purpose, out)
}

fn finish(program: String, purpose: &str, out: std::process::Output) -> Result<String, ToolError> {
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let msg = if stderr.trim().is_empty() {
            tail(&stdout, 6)
        } else {
            tail(&stderr, 6)
        };
        return Err(ToolError::Failed {
            program,
            purpose: purpose.to_string(),
            status: out.status,
            stderr: msg,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run`], with `input` written to the command's stdin (a key, so it never touches a file).
pub fn run_with_input(cmd: &mut Command, input: &[u8], purpose: &str) -> Result<String, ToolError> {
    use std::io::Write;
    let program = describe(cmd);
    let spawn_err = |source| ToolError::Spawn {
        program: program.clone(),
        purpose: purpose.to_string(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A tool that exits without reading (bad arguments) closes the pipe: its status says why.
    let _ = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().map_err(spawn_err)?;
    finish(program, purpose, out)
}

/// Check that every listed tool is installed; report all missing ones at once.
pub fn require_all(list: &[Tool]) -> Result<(), ToolError> {
    let missing: Vec<&Tool> = list.iter().filter(|t| t.locate().is_err()).collect();
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(ToolError::Missing {
            tool: one.program.to_string(),
            package: one.package.to_string(),
        }),
        many => Err(ToolError::Missing {
            tool: many
                .iter()
                .map(|t| t.program)
                .collect::<Vec<_>>()
                .join(", "),
            package: many
                .iter()
                .map(|t| t.package)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let t = Tool::new("icos-no-such-tool", "icos-fake-package");
        let err = t.command().unwrap_err().to_string();
        assert!(err.contains("icos-no-such-tool"), "{err}");
        assert!(err.contains("icos-fake-package"), "{err}");
    }

    #[test]
    fn failure_carries_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo first >&2; echo 'the real cause' >&2; exit 3"]);
        let err = run(&mut cmd, "test failing").unwrap_err().to_string();
        assert!(err.contains("the real cause"), "{err}");
        assert!(err.contains("test failing"), "{err}");
    }

    #[test]
    fn success_returns_stdout() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo hello"]);
        assert_eq!(run(&mut cmd, "echo").unwrap().trim(), "hello");
    }
}
