//! `icos setupos ...`: check an operator's config folder, put it onto a SetupOS image, and
//! (on the SetupOS stick) install the node.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use node_config::operator::{check_folder, ConfigSource, OperatorConfig};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum SetuposCmd {
    /// Check a config folder (or the CONFIG partition of a SetupOS image): every problem at
    /// once, with file, line and key; exit 0 only if SetupOS would accept it.
    CheckConfig {
        /// The config folder.
        #[arg(required_unless_present = "image")]
        dir: Option<PathBuf>,
        /// A SetupOS disk image: check what is on its CONFIG partition.
        #[arg(long, conflicts_with = "dir")]
        image: Option<PathBuf>,
    },
    /// Write a config folder onto a SetupOS image's CONFIG partition (no mounting, no root),
    /// after checking it.
    InjectConfig {
        #[arg(long)]
        image: PathBuf,
        #[arg(long)]
        config: PathBuf,
    },
    /// Install the node (the SetupOS service runs this once at boot).
    Install {
        /// Stop after `INSTALL COMPLETE` instead of rebooting.
        #[arg(long)]
        no_reboot: bool,
    },
}

pub fn setupos(cmd: SetuposCmd) -> Result<i32> {
    match cmd {
        SetuposCmd::CheckConfig { dir, image } => {
            let result = match (&dir, &image) {
                (Some(d), _) => check_folder(d),
                (None, Some(img)) => check_folder(&ImageConfig::open(img)?),
                (None, None) => bail!("give a config folder or --image"),
            };
            match result {
                Ok(c) => {
                    println!("{}", summary(&c));
                    Ok(0)
                }
                Err(problems) => {
                    for p in &problems {
                        println!("{p}");
                    }
                    eprintln!(
                        "{} problem(s): SetupOS would refuse this config",
                        problems.len()
                    );
                    Ok(1)
                }
            }
        }
        SetuposCmd::InjectConfig { image, config } => inject(&image, &config),
        SetuposCmd::Install { no_reboot } => {
            let opts = setupos::Options {
                reboot: !no_reboot,
                ..Default::default()
            };
            setupos::run(&opts);
            Ok(0)
        }
    }
}

fn summary(c: &OperatorConfig) -> String {
    format!(
        "ok: deployment {}, registry {} URL(s), IPv6 prefix {}::/64 via {}{}, operator key {}, {} admin SSH key(s)",
        c.deployment.name,
        c.deployment.registry.urls.len(),
        c.network.ipv6_prefix,
        c.network.ipv6_gateway,
        c.network
            .ipv4
            .as_ref()
            .map(|v| format!(", IPv4 {}/{}", v.address, v.prefix_length))
            .unwrap_or_default(),
        c.operator_public_key,
        c.ssh_admin_keys.len()
    )
}

/// The CONFIG partition of a SetupOS image (a file, read without mounting).
struct ImageConfig {
    image: PathBuf,
    start: u64,
    size: u64,
}

impl ImageConfig {
    fn open(image: &Path) -> Result<ImageConfig> {
        let parts = disk_layout::read_partitions(image).with_context(|| {
            format!(
                "{} is not a disk image with a partition table",
                image.display()
            )
        })?;
        let p = parts
            .iter()
            .find(|p| p.label == "setup_config")
            .with_context(|| {
                format!(
                    "{} has no setup_config partition: not a SetupOS image",
                    image.display()
                )
            })?;
        Ok(ImageConfig {
            image: image.to_path_buf(),
            start: p.start,
            size: p.size,
        })
    }

    fn fat(&self, write: bool) -> Result<boot_slots::Esp<disk_layout::Window<std::fs::File>>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.image)
            .with_context(|| format!("opening {}", self.image.display()))?;
        Ok(boot_slots::Esp::open(disk_layout::Window::new(
            f, self.start, self.size,
        ))?)
    }
}

impl ConfigSource for ImageConfig {
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        let fat = self.fat(false).map_err(std::io::Error::other)?;
        if !fat.exists(name) {
            return Ok(None);
        }
        fat.read_file(name).map(Some).map_err(std::io::Error::other)
    }
    fn describe(&self) -> String {
        format!("the CONFIG partition of {}", self.image.display())
    }
}

fn inject(image: &Path, config: &Path) -> Result<i32> {
    if let Err(problems) = check_folder(&config.to_path_buf()) {
        for p in &problems {
            println!("{p}");
        }
        bail!(
            "{} problem(s) in {}: nothing was written to {}",
            problems.len(),
            config.display(),
            image.display()
        );
    }
    let target = ImageConfig::open(image)?;
    let mut fat = target.fat(true)?;
    use node_config::operator::{CONFIG_INI, DEPLOYMENT_JSON, OPERATOR_KEY, SSH_ADMIN_KEYS};
    for name in [CONFIG_INI, DEPLOYMENT_JSON, OPERATOR_KEY, SSH_ADMIN_KEYS] {
        let src = config.join(name);
        if src.exists() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            fat.write_file(name, &mut bytes.as_slice())?;
        } else if fat.exists(name) {
            // A key file from an earlier injection must not outlive the folder.
            fat.remove(name)?;
        }
    }
    fat.close()?;
    println!(
        "wrote the config from {} onto the CONFIG partition of {}",
        config.display(),
        image.display()
    );
    Ok(0)
}
