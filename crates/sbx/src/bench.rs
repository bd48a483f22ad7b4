//! `sbx bench`: cold-run latency per language, printed beside baselines measured in the same
//! run — the boot floor (the same kernel and initramfs powering off at once, no agent) and
//! the same program run natively on the host. Ratios, not absolute times, are the result:
//! these machines are shared and noisy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox::images::ImageStore;
use sandbox::{vmm, Language, RunRequest, Scheduler};

use crate::cli::BenchArgs;
use crate::exit;
use crate::progress::BuildProgress;

struct Series {
    name: String,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: &str) -> Series {
        Series {
            name: name.to_string(),
            samples: Vec::new(),
        }
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut s = self.samples.clone();
        s.sort();
        if s.is_empty() {
            return Duration::ZERO;
        }
        // Nearest-rank percentile: the smallest sample with at least p of the data at or below it.
        let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }
}

fn program(language: Language) -> &'static str {
    match language {
        Language::Python => "print(1)",
        Language::Javascript => "console.log(1)",
        Language::Raw => "echo 1",
    }
}

pub async fn bench(args: BenchArgs, scheduler: Scheduler) -> i32 {
    let langs = if args.language.is_empty() {
        Language::ALL.to_vec()
    } else {
        args.language.clone()
    };
    let runs = args.runs.max(1);
    if let Err(e) = scheduler
        .ensure_images(&langs, Arc::new(BuildProgress::new(false)))
        .await
    {
        return crate::run::report_error(&e, false);
    }
    let verdict = match scheduler.accelerator().await {
        Ok(v) => v,
        Err(e) => return crate::run::report_error(&e, false),
    };
    eprintln!(
        "sbx bench: {runs} interleaved rounds, accelerator {:?}",
        verdict.accelerator
    );

    // Rounds interleave every measurement, so that load from elsewhere on a shared
    // machine lands on the baselines and the runs alike and the ratios stay meaningful.
    let floor_spec = match floor_spec(&scheduler, verdict.accelerator) {
        Ok(spec) => spec,
        Err(msg) => {
            eprintln!("sbx bench: boot floor: {msg}");
            return exit::INFRA;
        }
    };
    let registry = scheduler.registry();
    let mut floor = Series::new("floor (boot to power-off)");
    let mut native = Some(Series::new("native python3 (host)"));
    let mut cold: Vec<Series> = langs
        .iter()
        .map(|l| Series::new(&format!("cold {l}")))
        .collect();
    for round in 0..runs {
        match vmm::boot_to_poweroff(&floor_spec, &registry).await {
            Ok(d) => floor.samples.push(d),
            Err(e) => {
                eprintln!("sbx bench: boot floor: {e}");
                return exit::INFRA;
            }
        }
        // Without a host python3 the native baseline is left out, not faked.
        native = native.and_then(|mut s| {
            native_python().map(|d| {
                s.samples.push(d);
                s
            })
        });
        for (lang, series) in langs.iter().zip(cold.iter_mut()) {
            match scheduler.run(RunRequest::new(*lang, program(*lang))).await {
                Ok(r) if r.exit_code == 0 => series
                    .samples
                    .push(Duration::from_millis(r.timing.total_ms)),
                Ok(r) => {
                    eprintln!(
                        "sbx bench: {lang} run {round} exited {}: {}",
                        r.exit_code,
                        r.stderr_text()
                    );
                    return exit::INFRA;
                }
                Err(e) => return crate::run::report_error(&e, false),
            }
        }
    }
    let mut series = vec![floor];
    series.extend(native);
    series.extend(cold);
    print_table(&series);
    if let Some(path) = &args.json {
        let json: Vec<_> = series
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "samples_ms": s.samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
                })
            })
            .collect();
        if let Err(e) = std::fs::write(path, serde_json::Value::from(json).to_string()) {
            eprintln!("sbx bench: writing {}: {e}", path.display());
        }
    }
    0
}

fn floor_spec(scheduler: &Scheduler, accel: sandbox::Accelerator) -> Result<vmm::VmSpec, String> {
    let store = ImageStore::new(scheduler.config().cache_dir.clone());
    let boot = store
        .lookup_boot()
        .map_err(|e| e.to_string())?
        .ok_or("boot images are missing")?;
    Ok(vmm::VmSpec {
        qemu: scheduler.qemu().clone(),
        accelerator: accel,
        kernel: boot.kernel,
        initramfs: boot.initramfs,
        rootfs: None,
        memory_mb: sandbox::DEFAULT_MEMORY_MB,
        vcpus: scheduler.config().vcpus,
        boot_timeout: scheduler.config().boot_timeout,
        extra_cmdline: Vec::new(),
        home_disk: None,
    })
}

/// One native `python3 -c 'print(1)'` on the host; `None` when there is no python3.
fn native_python() -> Option<Duration> {
    let t = Instant::now();
    let status = std::process::Command::new("python3")
        .args(["-c", "print(1)"])
        .stdout(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| t.elapsed())
}

fn print_table(series: &[Series]) {
    let floor = series
        .first()
        .map(|s| s.percentile(0.5))
        .unwrap_or(Duration::ZERO);
    let native = series
        .iter()
        .find(|s| s.name.starts_with("native"))
        .map(|s| s.percentile(0.5));
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>10}",
        "measurement", "p50 ms", "p95 ms", "÷ floor", "÷ native"
    );
    for s in series {
        let p50 = s.percentile(0.5);
        let ratio = |base: Duration| {
            if base.is_zero() {
                "-".to_string()
            } else {
                format!("{:.2}×", p50.as_secs_f64() / base.as_secs_f64())
            }
        };
        println!(
            "{:<28} {:>9.1} {:>9.1} {:>9} {:>10}",
            s.name,
            p50.as_secs_f64() * 1000.0,
            s.percentile(0.95).as_secs_f64() * 1000.0,
            ratio(floor),
            native.map_or("-".to_string(), ratio),
        );
    }
    if let Some(python) = series.iter().find(|s| s.name == "cold python") {
        if !floor.is_zero() {
            let ratio = python.percentile(0.5).as_secs_f64() / floor.as_secs_f64();
            let verdict = if ratio <= PYTHON_TARGET {
                "met"
            } else {
                "NOT met"
            };
            println!("target: cold python p50 within {PYTHON_TARGET}× the floor: {verdict} ({ratio:.2}×)");
        }
    }
}

/// The cold-start goal: a Python run costs at most this multiple of a bare boot.
const PYTHON_TARGET: f64 = 1.6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = Series {
            name: "x".into(),
            samples: (1..=10).map(Duration::from_millis).collect(),
        };
        assert_eq!(s.percentile(0.5), Duration::from_millis(5));
        assert_eq!(s.percentile(0.95), Duration::from_millis(10));
        let one = Series {
            name: "y".into(),
            samples: vec![Duration::from_millis(7)],
        };
        assert_eq!(one.percentile(0.95), Duration::from_millis(7));
    }
}
