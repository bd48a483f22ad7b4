//! Manual check on a real host: accelerator probe, boot floor (median of N), agent boot.
//!
//! `cargo run -p vmm --example vmm-try -- <vmlinuz> <initramfs.cpio> [rootfs] [runs]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm::{AccelChoice, Registry, VmSpec};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: vmm-try <vmlinuz> <initramfs> [rootfs|-] [runs]";
    let kernel = PathBuf::from(args.next().ok_or(usage)?);
    let initramfs = PathBuf::from(args.next().ok_or(usage)?);
    let rootfs = args.next().filter(|s| s != "-").map(PathBuf::from);
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);

    let qemu = vmm::find_qemu(None)?;
    println!("qemu: {qemu:?}");
    println!("host tsc kHz: {:?}", vmm::host_tsc_khz());
    println!("cgroup: {:?}", vmm::probe_cgroup());
    let cache = std::env::temp_dir().join("vmm-try-cache");
    let t = Instant::now();
    let verdict =
        vmm::probe_accelerator(&qemu, &kernel, &initramfs, &cache, AccelChoice::Auto).await;
    println!("verdict ({:?}): {verdict:#?}", t.elapsed());

    let registry = Registry::open(&std::env::temp_dir().join(format!("vmm-try-{}", nix_uid())))?;
    let spec = VmSpec {
        qemu,
        accelerator: verdict.accelerator,
        kernel,
        initramfs,
        rootfs,
        memory_mb: 512,
        vcpus: 1,
        boot_timeout: Duration::from_secs(30),
        extra_cmdline: Vec::new(),
        home_disk: None,
        nic: false,
    };
    let mut times = Vec::new();
    for _ in 0..runs {
        match vmm::boot_to_poweroff(&spec, &registry).await {
            Ok(d) => times.push(d),
            Err(e) => println!("boot_to_poweroff failed: {e}"),
        }
    }
    times.sort();
    println!(
        "boot_to_poweroff: {times:?} median {:?}",
        times.get(times.len() / 2)
    );

    match vmm::Vm::boot(&spec, &registry).await {
        Ok(vm) => {
            println!(
                "Vm::boot: Ready after {:?} (guest uptime {:?}), pid {}",
                vm.boot_time(),
                vm.guest_uptime_at_ready(),
                vm.pid()
            );
            vm.shutdown().await;
        }
        Err(e) => println!("Vm::boot failed (transient={}): {e}", e.is_transient()),
    }
    Ok(())
}

fn nix_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}
