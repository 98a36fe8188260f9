//! `icos channel ...`: the guest side of the host-guest channel.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use daemon_support::release::{running_slot, Release};
use host_channel::{Client, Reply, Request};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ChannelCmd {
    /// The host's protocol version.
    ProtocolVersion,
    /// The HostOS version the host runs.
    HostosVersion,
    /// Show a message on the host console.
    Notify { message: String },
    /// Ask the host to install the HostOS version assigned to this node.
    RequestHostosUpgrade,
    /// At boot: tell the host this GuestOS came up, and print the host's HostOS version.
    Hello,
}

pub fn channel(cmd: ChannelCmd, device: PathBuf) -> Result<i32> {
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .with_context(|| format!("opening the host channel {}", device.display()))?;
    let mut c = Client::new(port);
    let req = match cmd {
        ChannelCmd::Hello => return hello(&mut c),
        ChannelCmd::ProtocolVersion => Request::ProtocolVersion {},
        ChannelCmd::HostosVersion => Request::HostosVersion {},
        ChannelCmd::Notify { message } => Request::Notify { message },
        ChannelCmd::RequestHostosUpgrade => Request::RequestHostosUpgrade {},
    };
    match c.call(req)? {
        Reply::ProtocolVersion { version } => println!("{version}"),
        Reply::HostosVersion { version } => println!("{version}"),
        Reply::Notified => println!("notified"),
        Reply::HostosUpgrade(a) => println!("{}", serde_json::to_string(&a)?),
    }
    Ok(0)
}

/// Tell the host this GuestOS booted (its console shows it) and print the host's version on
/// this guest's console.
fn hello(c: &mut Client<std::fs::File>) -> Result<i32> {
    let release = Release::running().context("reading this image's release file")?;
    let slot = running_slot()
        .map(|s| s.to_string())
        .unwrap_or_else(|| "-".into());
    let hostos = match c.call(Request::HostosVersion {})? {
        Reply::HostosVersion { version } => version,
        other => bail!("unexpected answer {other:?}"),
    };
    // The console line comes first: whoever sees the notification on the host can then
    // count on the line being in the serial log.
    let line = format!("{} HOST hostos={hostos}", release.banner);
    println!("{line}");
    daemon_support::Console::system().line(&line);
    c.call(Request::Notify {
        message: format!(
            "{} {} booted on slot {slot}",
            release.banner, release.version
        ),
    })?;
    Ok(0)
}
