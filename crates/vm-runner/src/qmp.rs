//! QMP: one command over the VM's control socket (power-down, reset).

use crate::*;
use std::io::{BufRead, BufReader, Write};

/// Send one QMP command (after the capabilities handshake).
pub fn qmp_command(socket: &Path, command: &str) -> Result<serde_json::Value, VmError> {
    use std::os::unix::net::UnixStream;
    let err = |message: String| VmError::Qmp {
        path: socket.to_path_buf(),
        message,
    };
    let stream =
        UnixStream::connect(socket_path(socket)?).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| err(e.to_string()))?);
    let mut w = stream;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| err(format!("greeting: {e}")))?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").map_err(|e| err(format!("send {cmd}: {e}")))?;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| err(format!("reply to {cmd}: {e}")))?;
            if n == 0 {
                return Err(err(format!(
                    "QEMU closed the monitor before answering {cmd}"
                )));
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| err(format!("bad reply: {e}")))?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!("{cmd}: {e}")));
            }
            if cmd == command {
                return Ok(v.get("return").cloned().unwrap_or_default());
            }
            break;
        }
    }
    unreachable!("the loop returns after the last command")
}
