//! Host facts the VM command line depends on: the TSC frequency and cgroup support.

use std::fs;
use std::path::Path;

/// The host's TSC frequency in kHz, passed to the guest as `tsc_early_khz=`.
///
/// Under TCG the guest TSC *is* the host TSC, and without this hint the guest's TSC
/// calibration sometimes fails and stalls boot for 90 s or more. A wrong value is worse
/// than none (the guest clock would run at the wrong rate), so every source used here is
/// an exact one, tried in order:
///
/// 1. `/sys/devices/system/cpu/cpu0/tsc_freq_khz` (only some kernels expose it);
/// 2. CPUID leaf 0x15 (TSC/crystal ratio × crystal Hz; modern Intel);
/// 3. CPUID leaf 0x40000010 (hypervisor timing leaf, TSC kHz in EAX; VMware/KVM/...);
/// 4. `/proc/cpuinfo`: the nominal frequency in the Intel model name (`@ 2.30GHz`, which is
///    the TSC rate on every Intel CPU with an invariant TSC), else `cpu MHz` *only under a
///    hypervisor with `tsc_known_freq`*, where the kernel reports its known TSC rate there.
///    On bare metal `cpu MHz` is the current, scaling frequency, so it is not used.
///
/// On the development machines (a VM with no sysfs file and zeroed leaf 0x15) the answer
/// comes from step 3 or 4.
pub fn host_tsc_khz() -> Option<u64> {
    let sysfs = fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz").ok();
    if let Some(khz) = sysfs
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|k| *k > 0)
    {
        return Some(khz);
    }
    if let Some(khz) = cpuid_tsc_khz() {
        return Some(khz);
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    tsc_khz_from_cpuinfo(&cpuinfo)
}

#[cfg(target_arch = "x86_64")]
// `__cpuid` became a safe fn in Rust 1.87; the workspace MSRV (1.80) still needs `unsafe`.
#[allow(unused_unsafe)]
fn cpuid_tsc_khz() -> Option<u64> {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID is available on every x86_64 CPU; reading an unsupported leaf returns
    // data for the highest basic leaf, so the max-leaf checks below guard the reads.
    let max_basic = unsafe { __cpuid(0) }.eax;
    if max_basic >= 0x15 {
        // SAFETY: leaf is within the reported range.
        let l = unsafe { __cpuid(0x15) };
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000);
        }
    }
    // SAFETY: as above; leaf 1 ECX bit 31 says a hypervisor is present.
    let hypervisor = unsafe { __cpuid(1) }.ecx & (1 << 31) != 0;
    if hypervisor {
        // SAFETY: hypervisor leaves are defined whenever the hypervisor bit is set.
        let max_hv = unsafe { __cpuid(0x4000_0000) }.eax;
        if (0x4000_0010..0x4001_0000).contains(&max_hv) {
            // SAFETY: within the hypervisor's reported range.
            let khz = unsafe { __cpuid(0x4000_0010) }.eax;
            if khz != 0 {
                return Some(u64::from(khz));
            }
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_tsc_khz() -> Option<u64> {
    None
}

/// Step 4 of [`host_tsc_khz`], on the text of `/proc/cpuinfo`.
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    let first_cpu = cpuinfo.split("\n\n").next()?;
    let field = |name: &str| {
        first_cpu.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_ascii_whitespace().any(|x| x == f);
    if !has("constant_tsc") {
        return None;
    }
    if let Some(model) = field("model name") {
        if let Some(ghz) = model
            .rsplit_once('@')
            .and_then(|(_, f)| f.trim().strip_suffix("GHz"))
        {
            if let Some(khz) = decimal_times(ghz.trim(), 1_000_000) {
                return Some(khz);
            }
        }
    }
    if has("hypervisor") && has("tsc_known_freq") {
        return field("cpu MHz").and_then(|mhz| decimal_times(&mhz, 1000));
    }
    None
}

/// Parses a non-negative decimal like `2300.000` and multiplies it by `scale` exactly
/// (no float rounding: `2.30` GHz must be exactly 2 300 000 kHz).
fn decimal_times(s: &str, scale: u64) -> Option<u64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut value = int.parse::<u64>().ok()?.checked_mul(scale)?;
    let mut unit = scale;
    for d in frac.bytes() {
        unit /= 10;
        if unit == 0 {
            break;
        }
        value = value.checked_add(u64::from(d - b'0') * unit)?;
    }
    (value > 0).then_some(value)
}

/// What cgroup support the host offers for per-VM limits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupInfo {
    /// The unified (v2) hierarchy is mounted at `/sys/fs/cgroup`.
    pub v2: bool,
    /// This process may create child cgroups under its own cgroup.
    pub writable: bool,
    /// Controllers available at the root (`cgroup.controllers`).
    pub controllers: Vec<String>,
}

/// Inspects `/sys/fs/cgroup` and this process's own cgroup. Never fails: anything
/// unreadable means "not available".
pub fn probe_cgroup() -> CgroupInfo {
    let root = Path::new("/sys/fs/cgroup");
    let Ok(controllers) = fs::read_to_string(root.join("cgroup.controllers")) else {
        return CgroupInfo {
            v2: false,
            writable: false,
            controllers: Vec::new(),
        };
    };
    let controllers = controllers
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    // In v2, /proc/self/cgroup has the single line `0::/path`.
    let own = fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
        s.lines().find_map(|l| {
            l.strip_prefix("0::")
                .map(|p| p.trim_start_matches('/').to_string())
        })
    });
    let writable = own
        .map(|p| nix::unistd::access(&root.join(p), nix::unistd::AccessFlags::W_OK).is_ok())
        .unwrap_or(false);
    CgroupInfo {
        v2: true,
        writable,
        controllers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM_CPUINFO: &str = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2300.000\nflags\t\t: fpu tsc constant_tsc nonstop_tsc tsc_known_freq hypervisor\n\nprocessor\t: 1\n";

    #[test]
    fn cpuinfo_under_hypervisor_uses_cpu_mhz() {
        assert_eq!(tsc_khz_from_cpuinfo(VM_CPUINFO), Some(2_300_000));
    }

    #[test]
    fn cpuinfo_model_name_wins_and_is_exact() {
        let s = "model name\t: Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz\ncpu MHz\t\t: 3400.117\nflags\t\t: tsc constant_tsc\n";
        assert_eq!(tsc_khz_from_cpuinfo(s), Some(1_900_000));
    }

    #[test]
    fn cpuinfo_bare_metal_without_nominal_is_none() {
        let s =
            "model name\t: AMD Ryzen 7 5800X\ncpu MHz\t\t: 3400.117\nflags\t\t: tsc constant_tsc\n";
        assert_eq!(tsc_khz_from_cpuinfo(s), None);
        let no_const = "model name\t: X @ 2.00GHz\nflags\t\t: tsc\n";
        assert_eq!(tsc_khz_from_cpuinfo(no_const), None);
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal_times("2.30", 1_000_000), Some(2_300_000));
        assert_eq!(decimal_times("2300.000", 1000), Some(2_300_000));
        assert_eq!(decimal_times("3", 1000), Some(3000));
        assert_eq!(decimal_times("", 1000), None);
        assert_eq!(decimal_times("1.2.3", 1000), None);
        assert_eq!(decimal_times("-1", 1000), None);
    }

    #[test]
    fn host_tsc_is_plausible_when_known() {
        if let Some(khz) = host_tsc_khz() {
            assert!((100_000..20_000_000).contains(&khz), "{khz}");
        }
    }
}
