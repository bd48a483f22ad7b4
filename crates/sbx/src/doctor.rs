//! `sbx doctor`: what this machine offers and what the sandbox will use, with reasons.

use serde::Serialize;

use sandbox::images::ImageStore;
use sandbox::{vmm, AccelChoice, Language};

use crate::exit;

#[derive(Serialize)]
struct Report {
    qemu: Option<String>,
    qemu_error: Option<String>,
    accelerator: Option<sandbox::AccelVerdict>,
    accelerator_note: Option<String>,
    kvm_device: String,
    cgroup_v2: bool,
    cgroup_writable: bool,
    cgroup_controllers: Vec<String>,
    host_tsc_khz: Option<u64>,
    cache_dir: String,
    runtime_dir: String,
    scratch_dir: String,
    /// Home disk images in that dir would take host memory.
    scratch_on_tmpfs: bool,
    mke2fs: Option<String>,
    mke2fs_error: Option<String>,
    images: Vec<ImageLine>,
    /// Whether a guest can have a network (QEMU's `-netdev stream`), and the resolver the
    /// network processes ask.
    network: Option<String>,
}

#[derive(Serialize)]
struct ImageLine {
    language: Language,
    built: bool,
    key: Option<String>,
}

pub async fn doctor(args: crate::cli::DoctorArgs) -> i32 {
    let config = match crate::config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = ImageStore::new(config.cache_dir.clone());
    let (qemu, qemu_error) = match vmm::find_qemu(config.qemu.as_deref()) {
        Ok(q) => (Some(q), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let cgroup = vmm::probe_cgroup();
    let mut images = Vec::new();
    for language in Language::ALL {
        let found = store.lookup(language).ok().flatten();
        images.push(ImageLine {
            language,
            built: found.is_some(),
            key: found.map(|g| g.key),
        });
    }
    let (accelerator, accelerator_note) = match (&qemu, store.lookup_boot()) {
        (Some(q), Ok(Some(boot))) => {
            // Always show what the probe finds, even when SBX_ACCEL forces a choice: a forced
            // KVM that the probe rejects is the first thing to know about.
            let verdict = vmm::probe_accelerator(
                q,
                &boot.kernel,
                &boot.initramfs,
                &config.cache_dir,
                AccelChoice::Auto,
            )
            .await;
            let note = match config.accelerator {
                AccelChoice::Force(forced) if forced != verdict.accelerator => Some(format!(
                    "SBX_ACCEL forces {forced:?}, but the probe chose {:?}: runs {}",
                    verdict.accelerator,
                    if forced == sandbox::Accelerator::Kvm {
                        "fail at once"
                    } else {
                        "are slower"
                    }
                )),
                AccelChoice::Force(forced) => {
                    Some(format!("SBX_ACCEL forces {forced:?}, as the probe would"))
                }
                AccelChoice::Auto => None,
            };
            (Some(verdict), note)
        }
        (None, _) => (None, Some("no QEMU: cannot probe".to_string())),
        (_, Err(e)) => (None, Some(format!("cannot read the image cache: {e}"))),
        (_, Ok(None)) => (
            None,
            Some(
                "no kernel built yet: run `sbx images build` so the accelerator can be probed"
                    .into(),
            ),
        ),
    };
    let (mke2fs, mke2fs_error) = match vmm::find_mke2fs() {
        Ok(p) => (Some(p.display().to_string()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let report = Report {
        qemu: qemu
            .as_ref()
            .map(|q| format!("{} ({})", q.path.display(), q.version_string)),
        qemu_error,
        accelerator,
        accelerator_note,
        kvm_device: kvm_device_state(),
        cgroup_v2: cgroup.v2,
        cgroup_writable: cgroup.writable,
        cgroup_controllers: cgroup.controllers,
        host_tsc_khz: vmm::host_tsc_khz(),
        cache_dir: config.cache_dir.display().to_string(),
        runtime_dir: config.runtime_dir.display().to_string(),
        scratch_dir: config.scratch_dir.display().to_string(),
        scratch_on_tmpfs: vmm::scratch_on_tmpfs(&config.scratch_dir),
        mke2fs,
        mke2fs_error,
        network: qemu.as_ref().map(|q| {
            let dns = config.upstream_dns.map_or_else(
                || "the host's first nameserver".to_string(),
                |a| a.to_string(),
            );
            if q.supports_netdev_stream() {
                format!("available (-netdev stream); DNS upstream: {dns}")
            } else {
                "UNAVAILABLE: QEMU older than 7.2 has no -netdev stream; network flags will fail"
                    .to_string()
            }
        }),
        images,
    };
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(t) => println!("{t}"),
            Err(e) => eprintln!("sbx: {e}"),
        }
    } else {
        print_text(&report);
    }
    // Missing images are a normal state (they are built on first use); missing QEMU or
    // mke2fs is not.
    if report.qemu.is_some() && report.mke2fs.is_some() {
        0
    } else {
        exit::INFRA
    }
}

fn kvm_device_state() -> String {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => "present, opens read-write".into(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "absent".into(),
        Err(e) => format!("present but cannot be opened: {e}"),
    }
}

fn print_text(r: &Report) {
    let line = |k: &str, v: &str| println!("{k:<17} {v}");
    match (&r.qemu, &r.qemu_error) {
        (Some(q), _) => line("QEMU", q),
        (None, Some(e)) => line("QEMU", &format!("MISSING: {e}")),
        (None, None) => line("QEMU", "missing"),
    }
    line("/dev/kvm", &r.kvm_device);
    match &r.accelerator {
        Some(v) => {
            let cached = if v.from_cache {
                " (cached verdict)"
            } else {
                ""
            };
            line(
                "accelerator",
                &format!("{:?}{cached}", v.accelerator).to_lowercase(),
            );
            line("  why", &v.reason);
            if let Some(why) = &v.kvm_rejected_because {
                line("  KVM", &format!("rejected: {why}"));
            }
            if let Some(note) = &r.accelerator_note {
                line("  note", note);
            }
        }
        None => line(
            "accelerator",
            r.accelerator_note.as_deref().unwrap_or("unknown"),
        ),
    }
    let cg = if r.cgroup_v2 {
        format!(
            "v2, {}, controllers: {}",
            if r.cgroup_writable {
                "writable"
            } else {
                "read-only"
            },
            r.cgroup_controllers.join(" ")
        )
    } else {
        "no cgroup v2 (rlimits only)".into()
    };
    line("cgroups", &cg);
    if let Some(net) = &r.network {
        line("network", net);
    }
    line(
        "host TSC",
        &r.host_tsc_khz
            .map_or("unknown (guest TSC calibration may be slow)".into(), |k| {
                format!("{k} kHz")
            }),
    );
    line("cache dir", &r.cache_dir);
    line("runtime dir", &r.runtime_dir);
    let scratch_note = if r.scratch_on_tmpfs {
        " (WARNING: on tmpfs, so guests' home disks take host memory; set SBX_SCRATCH_DIR)"
    } else {
        ""
    };
    line("scratch dir", &format!("{}{scratch_note}", r.scratch_dir));
    match (&r.mke2fs, &r.mke2fs_error) {
        (Some(p), _) => line("mke2fs", p),
        (None, e) => line(
            "mke2fs",
            &format!("MISSING: {}", e.as_deref().unwrap_or("?")),
        ),
    }
    for img in &r.images {
        let state = match &img.key {
            Some(key) => format!("built ({key})"),
            None => "not built (built on first use, or `sbx images build`)".into(),
        };
        line(&format!("image {}", img.language), &state);
    }
}
