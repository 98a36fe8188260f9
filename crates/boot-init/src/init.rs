//! The boot sequence the init runs as PID 1: mounts, modules, verity root, /var, handover.
//! Every failure prints `<BANNER> BOOT FAILURE <what and where>` on the console, then
//! reboots as the kernel's `panic=` says, so boot counting moves the node to its other slot.

use crate::args::BootArgs;
use crate::{disks, dm, modules, var, InitError};
use std::ffi::CString;
use std::path::Path;
use std::time::{Duration, Instant};

const NEW_ROOT: &str = "/root";
/// How long disks may take to show up (USB install media are slow to enumerate).
const DISK_TIMEOUT: Duration = Duration::from_secs(30);

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), InitError> {
    let c = |s: &str| CString::new(s).expect("no NUL in mount arguments");
    let (src_c, target_c, fs_c, data_c) = (c(src), c(target), c(fstype), c(data));
    // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                fs_c.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if flags & libc::MS_MOVE == 0
            && e.raw_os_error() == Some(libc::EBUSY)
            && fstype == "devtmpfs"
        {
            return Ok(()); // the kernel mounted it already
        }
        return Err(InitError::Mount(format!(
            "mounting {src} ({fstype}) on {target}: {e}"
        )));
    }
    Ok(())
}

/// Console output: the kernel hands PID 1 the console as stdio when /dev/console exists in
/// the initramfs; once devtmpfs is up, make sure of it.
fn attach_console() {
    if let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: duplicating a valid descriptor onto the standard ones.
            unsafe { libc::dup2(f.as_raw_fd(), fd) };
        }
    }
}

struct Steps {
    debug: bool,
    start: Instant,
}

impl Steps {
    fn done(&self, what: &str) {
        if self.debug {
            eprintln!(
                "icos-init: {what} ({} ms)",
                self.start.elapsed().as_millis()
            );
        }
    }
}

/// Kernel filesystems, console and the command line.
fn early() -> Result<BootArgs, InitError> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", flags, "")?;
    mount("sysfs", "/sys", "sysfs", flags, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    attach_console();
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| InitError::io("reading", Path::new("/proc/cmdline"), e))?;
    BootArgs::parse(&cmdline)
}

/// Everything up to the handover: modules, verity root, switch, /var.
fn boot(args: &BootArgs) -> Result<(), InitError> {
    let steps = Steps {
        debug: args.debug,
        start: Instant::now(),
    };
    let n = modules::load_all(Path::new("/"))?;
    steps.done(&format!("{n} modules loaded"));

    // Root and /var in one search, while /sys and /dev are still where it looks.
    let mut wanted = vec![(args.root, "root")];
    wanted.extend(args.var.map(|guid| (guid, "var")));
    let mut parts = disks::wait_for(&wanted, DISK_TIMEOUT)?.into_iter();
    let root = parts.next().expect("one per wanted partition");
    let var_part = parts.next();
    steps.done(&format!("root partition {}", root.node.display()));
    let table = dm::Target::parse(&args.verity.table(&root.devno))?;
    let (major, minor) = dm::create_readonly(Path::new("/dev/mapper/control"), "root", &table)?;
    // libdevmapper's name for it, which the kernel command line (root=) and the mount table use.
    let node = CString::new("/dev/mapper/root").expect("no NUL");
    // SAFETY: valid path; makedev of the numbers the kernel returned.
    if unsafe {
        libc::mknod(
            node.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major, minor),
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(InitError::io("creating", Path::new("/dev/mapper/root"), e));
        }
    }
    mount("/dev/mapper/root", NEW_ROOT, "erofs", libc::MS_RDONLY, "")?;
    steps.done("verity root mounted");

    // The new root gets the kernel filesystems, then becomes `/`.
    for m in ["/dev", "/proc", "/sys"] {
        mount(m, &format!("{NEW_ROOT}{m}"), "", libc::MS_MOVE, "")?;
    }
    switch_root()?;
    match var_part {
        None => mount(
            "tmpfs",
            "/var",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755,size=25%",
        )?,
        Some(part) => mount_var(&part.node)?,
    }
    steps.done("/var mounted, handing over");
    Ok(())
}

/// Mount /var, creating its filesystem on a slot's first boot and recreating it when it no
/// longer mounts: it holds only what this slot's OS made since it was installed, and a node
/// that is up beats one kept down by a broken cache.
fn mount_var(dev: &Path) -> Result<(), InitError> {
    let name = dev.display().to_string();
    if !var::has_ext4(dev)? {
        eprintln!("icos: creating /var on {name} (first boot of this slot)");
        var::make_fs(dev)?;
    }
    if let Err(e) = mount(&name, "/var", "ext4", libc::MS_NOATIME, "") {
        eprintln!("icos: /var on {name} could not be mounted ({e}); recreating it");
        var::make_fs(dev)?;
        mount(&name, "/var", "ext4", libc::MS_NOATIME, "")
            .map_err(|e| InitError::Var(format!("cannot mount /var on {name}: {e}")))?;
    }
    Ok(())
}

/// Free the initramfs's memory and make the new root `/`.
fn switch_root() -> Result<(), InitError> {
    // Only what we packed lives on the initramfs; everything else is a mount point now.
    let _ = std::fs::remove_dir_all("/lib");
    let _ = std::fs::remove_file("/init");
    std::env::set_current_dir(NEW_ROOT)
        .map_err(|e| InitError::io("entering", Path::new(NEW_ROOT), e))?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    std::os::unix::fs::chroot(".")
        .map_err(|e| InitError::io("chroot into", Path::new(NEW_ROOT), e))?;
    std::env::set_current_dir("/").map_err(|e| InitError::io("entering", Path::new("/"), e))
}

/// Execute the real init; returns only on failure.
fn exec_init(init: &str) -> InitError {
    let Ok(prog) = CString::new(init) else {
        return InitError::Args(format!("init={init} contains NUL"));
    };
    let argv = [prog.as_ptr(), std::ptr::null()];
    // SAFETY: NUL-terminated program and argument vector; returns only on failure.
    unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
    InitError::io("starting", Path::new(init), std::io::Error::last_os_error())
}

/// Report a fatal error and reboot (or wait) as `panic=` says. Never returns.
fn fail(args: Option<&BootArgs>, e: &InitError) -> ! {
    let banner = args.map(|a| a.banner.as_str()).unwrap_or("ICOS");
    eprintln!("{banner} BOOT FAILURE initramfs: {e}");
    let wait = args.and_then(|a| a.panic_secs).unwrap_or(0);
    if wait > 0 {
        eprintln!("icos-init: rebooting in {wait} s");
        std::thread::sleep(Duration::from_secs(wait as u64));
    }
    if wait != 0 {
        // SAFETY: no filesystem is mounted read-write that could lose data.
        unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The init's entry point.
pub fn run() -> ! {
    let args = match early() {
        Ok(a) => a,
        Err(e) => fail(None, &e),
    };
    if let Err(e) = boot(&args) {
        fail(Some(&args), &e);
    }
    fail(Some(&args), &exec_init(&args.init))
}
