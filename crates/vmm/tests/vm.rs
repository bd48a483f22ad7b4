//! VM tests: boot real guests from the images in the user cache (`sbx images build` puts
//! them there; `scripts/test.sh` does so before the tests). `SBX_TEST_KERNEL`,
//! `SBX_TEST_INITRAMFS` and `SBX_TEST_ROOTFS` point at other images instead. Missing images
//! fail the tests: a VM test that silently skips proves nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vmm::{AccelChoice, Accelerator, BootError, ChannelError, Registry, Vm, VmSpec};

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.exists())
}

fn spec(with_rootfs: bool) -> VmSpec {
    let cached = images::ImageStore::open_default()
        .and_then(|store| store.lookup(protocol::Language::Raw))
        .expect("read the image cache")
        .expect("guest images are not built: run `sbx images build` (scripts/test.sh does)");
    let kernel = env_path("SBX_TEST_KERNEL").unwrap_or(cached.kernel);
    let initramfs = env_path("SBX_TEST_INITRAMFS").unwrap_or(cached.initramfs);
    let rootfs = with_rootfs.then(|| env_path("SBX_TEST_ROOTFS").unwrap_or(cached.rootfs));
    let qemu = vmm::find_qemu(None).expect("QEMU is installed where images are");
    let accelerator = match std::env::var("SBX_ACCEL").as_deref() {
        Ok("kvm") => Accelerator::Kvm,
        _ => Accelerator::Tcg,
    };
    VmSpec {
        qemu,
        accelerator,
        kernel,
        initramfs,
        rootfs,
        memory_mb: 512,
        vcpus: 1,
        boot_timeout: Duration::from_secs(60),
        extra_cmdline: Vec::new(),
        home_disk: None,
        nic: false,
    }
}

fn registry() -> (tempfile::TempDir, Registry) {
    // Short path: the agent socket lives under it and must stay below 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("vmmt")
        .tempdir_in("/tmp")
        .unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    (dir, reg)
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

fn assert_dead(pid: u32) {
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("QEMU {pid} still exists");
}

#[tokio::test]
async fn boot_to_poweroff_sees_the_probe_marker() {
    let spec = spec(false);
    let (dir, reg) = registry();
    let t = vmm::boot_to_poweroff(&spec, &reg).await.unwrap();
    eprintln!("boot to poweroff: {t:?}");
    assert_empty(dir.path());
}

#[tokio::test]
async fn accelerator_probe_is_cached() {
    let spec = spec(false);
    let cache = tempfile::tempdir().unwrap();
    let probe = || {
        vmm::probe_accelerator(
            &spec.qemu,
            &spec.kernel,
            &spec.initramfs,
            cache.path(),
            AccelChoice::Auto,
        )
    };
    let first = probe().await;
    eprintln!("verdict: {first:?}");
    if first.accelerator == Accelerator::Tcg {
        assert!(first.kvm_rejected_because.is_some());
    }
    let second = probe().await;
    // A verdict is cached unless the probe could not decide (/dev/kvm unusable is instant).
    if first.reason.contains("/dev/kvm") && !first.reason.contains("within") {
        assert!(!second.from_cache);
    } else {
        assert!(second.from_cache, "{second:?}");
    }
    assert_eq!(first.accelerator, second.accelerator);
}

#[tokio::test]
async fn cancelled_boot_leaks_nothing() {
    let spec = spec(false);
    let (dir, reg) = registry();
    let r = tokio::time::timeout(Duration::from_millis(300), Vm::boot(&spec, &reg)).await;
    assert!(r.is_err(), "a TCG boot cannot be ready in 300 ms");
    // The dropped future dropped the Instance: killed, reaped, cleaned synchronously.
    assert_empty(dir.path());
}

#[tokio::test]
async fn boot_timeout_is_transient_and_cleans_up() {
    let mut spec = spec(false);
    spec.boot_timeout = Duration::from_millis(500);
    let (dir, reg) = registry();
    let err = Vm::boot(&spec, &reg).await.unwrap_err();
    assert!(matches!(err, BootError::Timeout { .. }), "{err}");
    assert!(err.is_transient());
    assert_empty(dir.path());
}

#[tokio::test]
async fn boots_to_ready_and_detects_frozen_and_dead_qemu() {
    let spec = spec(true);
    let (dir, reg) = registry();
    let mut vm = Vm::boot(&spec, &reg).await.unwrap();
    eprintln!("ready after {:?}", vm.boot_time());
    let pid = vm.pid();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().nth(4),
        Some("0"),
        "QEMU may dump core: {core}"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(2), vm.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, ChannelError::Frozen { state: 'T', .. }),
        "{err}"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(2), vm.recv())
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, ChannelError::QemuExited { .. }), "{err}");
    vm.shutdown().await;
    assert_dead(pid);
    assert_empty(dir.path());

    // And a normal shutdown of a healthy VM.
    let vm = Vm::boot(&spec, &reg).await.unwrap();
    let pid = vm.pid();
    vm.shutdown().await;
    assert_dead(pid);
    assert_empty(dir.path());
}
