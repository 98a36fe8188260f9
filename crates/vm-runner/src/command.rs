//! The QEMU command line for a VM config.

use crate::*;

/// The out-of-band NIC's MAC (locally administered, distinct from every node's).
pub const OOB_MAC: &str = "02:00:00:00:0b:01";

impl Vm {
    /// Build the QEMU command line for a config (exposed for logging and tests).
    pub fn command(cfg: &VmConfig, accel: Accel) -> Result<Command, VmError> {
        let mut cmd = host_tools::tools::QEMU.command()?;
        let (accel_arg, cpu) = match accel {
            Accel::Kvm => ("kvm", "host"),
            _ => ("tcg", "max"),
        };
        cmd.arg("-name").arg(&cfg.name);
        cmd.args(["-machine", "q35", "-accel", accel_arg, "-cpu", cpu]);
        cmd.arg("-m").arg(cfg.memory_mib.to_string());
        cmd.arg("-smp").arg(cfg.cpus.to_string());
        cmd.args(["-nodefaults", "-display", "none", "-vga", "none"]);
        if cfg.no_reboot {
            cmd.arg("-no-reboot");
        }
        match &cfg.boot {
            Boot::Uefi => {
                let vars = cfg
                    .efi_vars
                    .clone()
                    .unwrap_or_else(|| cfg.sibling(".efivars.fd"));
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                cmd.arg("-kernel").arg(kernel);
                if let Some(i) = initrd {
                    cmd.arg("-initrd").arg(i);
                }
                cmd.arg("-append").arg(append);
            }
        }
        let snap = if cfg.snapshot { ",snapshot=on" } else { "" };
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=writeback{snap}",
            cfg.disk.display()
        ));
        for d in &cfg.extra_disks {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio{snap}", d.display()));
        }
        if let Some(fwds) = &cfg.network {
            let mut netdev = "user,id=n0".to_string();
            for (host, guest) in fwds {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            cmd.arg("-netdev").arg(netdev);
            // romfile= : no iPXE option ROM (UEFI needs none to boot from disk).
            let mut dev = "virtio-net-pci,netdev=n0,romfile=".to_string();
            if let Some(mac) = &cfg.mac {
                dev.push_str(&format!(",mac={mac}"));
            }
            cmd.arg("-device").arg(dev);
        }
        if let Some(fwds) = &cfg.oob_network {
            let mut netdev = "user,id=n1".to_string();
            for (host, guest) in fwds {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            cmd.arg("-netdev").arg(netdev);
            cmd.arg("-device")
                .arg(format!("virtio-net-pci,netdev=n1,romfile=,mac={OOB_MAC}"));
        }
        let ports: Vec<(&str, &PathBuf)> = cfg
            .channel_socket
            .iter()
            .map(|s| (CHANNEL_NAME, s))
            .chain(cfg.extra_ports.iter().map(|(n, s)| (n.as_str(), s)))
            .collect();
        if !ports.is_empty() {
            cmd.args(["-device", "virtio-serial-pci,id=vser0"]);
        }
        for (i, (name, sock)) in ports.iter().enumerate() {
            cmd.arg("-chardev").arg(format!(
                "socket,id=chan{i},path={},server=on,wait=off",
                socket_path(sock)?.display()
            ));
            cmd.arg("-device").arg(format!(
                "virtserialport,bus=vser0.0,chardev=chan{i},name={name}"
            ));
        }
        let qmp = cfg
            .qmp_socket
            .clone()
            .unwrap_or_else(|| cfg.sibling(".qmp"));
        cmd.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            socket_path(&qmp)?.display()
        ));
        if cfg.console_on_terminal {
            cmd.arg("-chardev").arg(format!(
                "stdio,id=ser0,mux=on,signal=off,logfile={}",
                cfg.serial_log.display()
            ));
            cmd.args(["-serial", "chardev:ser0", "-mon", "chardev=ser0"]);
        } else {
            cmd.arg("-chardev")
                .arg(format!("file,id=ser0,path={}", cfg.serial_log.display()));
            cmd.args(["-serial", "chardev:ser0"]);
        }
        Ok(cmd)
    }
}
