//! `icos data open`: the GuestOS data partition at boot (see the `data-volume` crate). Its
//! console line is what the boot log shows; a failure names the stage and what to do.

use anyhow::Result;
use clap::Subcommand;
use data_volume::DataVolume;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DataCmd {
    /// Open the encrypted data partition and mount it (formatting it only when blank).
    /// Without options, the GuestOS's own partitions and /var/lib/icos/data.
    Open {
        /// The config partition holding the key.
        #[arg(long)]
        config_store: Option<PathBuf>,
        /// The raw data partition.
        #[arg(long)]
        device: Option<PathBuf>,
        #[arg(long)]
        mount_point: Option<PathBuf>,
    },
}

pub fn data(cmd: DataCmd) -> Result<i32> {
    match cmd {
        DataCmd::Open {
            config_store,
            device,
            mount_point,
        } => {
            let d = DataVolume::default();
            let v = DataVolume {
                config_store: config_store.unwrap_or(d.config_store),
                device: device.unwrap_or(d.device),
                mount_point: mount_point.unwrap_or(d.mount_point),
                name: d.name,
            };
            // Straight to the console, as the boot status lines are: the line reads the same
            // in a serial log as on a screen.
            let console = daemon_support::Console::system();
            match data_volume::open(&v) {
                Ok(opened) => {
                    console.line(&format!("GUESTOS DATA READY {opened}"));
                    Ok(0)
                }
                Err(e) => {
                    console.line(&format!("GUESTOS DATA FAILURE: {e}"));
                    Ok(1)
                }
            }
        }
    }
}
