//! `/init` of every icos initramfs (PID 1 until systemd takes over). See the `boot_init` crate.

fn main() {
    // Only returns on failure, after reporting it; PID 1 must then not exit (that panics the
    // kernel with a message that hides ours), so `run` reboots or waits as `panic=` says.
    boot_init::init::run();
}
