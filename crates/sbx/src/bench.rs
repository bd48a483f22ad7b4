//! `sbx bench`: what the sandbox costs, printed beside baselines measured in the same run.
//!
//! - Cold-run latency per language, beside the boot floor (the same kernel and initramfs
//!   powering off at once, no agent) and the same program run natively on the host.
//! - In one Python session: the round trip of a call that does nothing (`pass`), beside a
//!   host loopback round trip of about the same bytes; and file upload/download
//!   throughput, beside the same bytes pushed through a host loopback TCP connection.
//! - Port forwarding and DNS ([`net`]), beside host loopback connections.
//!
//! Ratios, not absolute times, are the result: these machines are shared and noisy, so
//! every baseline is interleaved with what it is compared to, and nothing is asserted.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox::images::ImageStore;
use sandbox::{vmm, Language, RunRequest, Scheduler, Session, SessionOptions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

use crate::cli::BenchArgs;
use crate::exit;
use crate::progress::BuildProgress;

mod net;

/// Session calls timed per round. A call costs milliseconds where a cold run costs
/// seconds, and a p95 over a handful of samples would only be the maximum.
const SESSION_CALLS_PER_ROUND: usize = 50;

/// Transfer repetitions (fewer when fewer rounds are asked for). Each moves the whole file
/// up and back down, which is slow under TCG; the median is reported.
const TRANSFER_REPS: usize = 3;

/// Sizes of the loopback round trip, frame headers included: about what a session call
/// for `pass` puts on the agent channel — an `Exec` request (a 4-byte length, then
/// postcard: the code, 32 bytes of entropy, caps, clock, timeout) and its `Completed`
/// answer.
const RTT_REQUEST_BYTES: usize = 64;
const RTT_REPLY_BYTES: usize = 16;

/// The write size of the loopback TCP baseline: the session moves files in chunks of this
/// size (the protocol's `MAX_CHUNK`).
const TCP_CHUNK: usize = 64 * 1024;

/// The transfer file's name in the guest (relative to the home directory), and its full
/// path for the Python that removes it between repetitions.
const GUEST_FILE: &str = "sbx-bench.bin";
const GUEST_FILE_ABSOLUTE: &str = "/home/user/sbx-bench.bin";

struct Series {
    name: String,
    samples: Vec<Duration>,
    /// Bytes moved by each sample, for throughput series.
    bytes: Option<u64>,
}

impl Series {
    fn new(name: &str) -> Series {
        Series {
            name: name.to_string(),
            samples: Vec::new(),
            bytes: None,
        }
    }

    fn throughput(name: &str, bytes: u64) -> Series {
        Series {
            bytes: Some(bytes),
            ..Series::new(name)
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

    /// MiB/s at the median sample; `None` for latency series or without samples.
    fn mib_per_s(&self) -> Option<f64> {
        let bytes = self.bytes?;
        let secs = self.percentile(0.5).as_secs_f64();
        (secs > 0.0).then(|| bytes as f64 / MIB as f64 / secs)
    }
}

const MIB: u64 = 1024 * 1024;

/// The most `--network-mb` may ask for: each round moves it twice through the guest.
const MAX_NETWORK_MB: u64 = 4096;

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
    // Checked before anything boots, so a size that cannot fit fails at once.
    let session_disk = match session_disk_mb(args.transfer_mb) {
        Ok(mb) => mb,
        Err(msg) => {
            eprintln!("sbx bench: {msg}");
            return exit::USAGE;
        }
    };
    if let Err(e) = scheduler
        .ensure_images(&langs, Arc::new(BuildProgress::new(false)))
        .await
    {
        return crate::run::report_error(&e, false);
    }
    if args.network_mb > MAX_NETWORK_MB {
        eprintln!(
            "sbx bench: --network-mb {}: at most {MAX_NETWORK_MB}",
            args.network_mb
        );
        return exit::USAGE;
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

    // The session measurements are a Python REPL's (`pass` is the call that does nothing
    // there); asking for other languages only is asking not to boot Python.
    if langs.contains(&Language::Python) {
        // No overflow: session_disk_mb bounded the size above.
        let transfer_bytes = args.transfer_mb * MIB;
        match session_phases(&scheduler, runs, transfer_bytes, session_disk).await {
            Ok(phases) => {
                println!();
                print_session_table(&phases.calls);
                if let Some(transfers) = &phases.transfers {
                    println!();
                    print_transfer_table(transfers);
                }
                series.extend(phases.calls);
                series.extend(phases.transfers.into_iter().flatten());
            }
            Err(code) => return code,
        }
        if args.network_mb > 0 {
            match net::measure(&scheduler, runs, args.network_mb * MIB).await {
                Ok(net_series) => {
                    println!();
                    net::print_table(&net_series);
                    series.extend(net_series);
                }
                Err(code) => return code,
            }
        }
    } else {
        eprintln!(
            "sbx bench: session calls, file transfers and the network run in Python; not measured"
        );
    }

    if let Some(path) = &args.json {
        if let Err(e) = std::fs::write(path, samples_json(&series).to_string()) {
            eprintln!("sbx bench: writing {}: {e}", path.display());
            return exit::INFRA;
        }
    }
    0
}

fn samples_json(series: &[Series]) -> serde_json::Value {
    let json: Vec<_> = series
        .iter()
        .map(|s| {
            let mut entry = serde_json::json!({
                "name": s.name,
                "samples_ms": s.samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect::<Vec<_>>(),
            });
            if let Some(bytes) = s.bytes {
                entry["bytes"] = bytes.into();
            }
            entry
        })
        .collect();
    json.into()
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
        nic: false,
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

/// The home disk of the bench's session, in MiB — the one place that decides it.
///
/// The transfer file lands in the guest's home directory, an ext4 disk of its own (no
/// journal, no reserved blocks, an inode per 16 KiB: ~2% overhead). Twice the file plus
/// 64 MiB holds it with room to spare, even beside the upload's temporary copy; the image
/// is sparse, so the host only pays for what is written. Memory stays at the default: the
/// file's pages in the guest are page cache the kernel can drop.
fn session_disk_mb(transfer_mb: u64) -> Result<u32, String> {
    let needed = transfer_mb
        .saturating_mul(2)
        .saturating_add(64)
        .max(u64::from(sandbox::DEFAULT_DISK_MB));
    u32::try_from(needed)
        .ok()
        .filter(|&mb| mb <= sandbox::MAX_DISK_MB)
        .ok_or_else(|| {
            format!(
                "--transfer-mb {transfer_mb} needs a {needed} MiB home disk to hold the file; \
                 a VM's may be at most {} MiB, which allows up to --transfer-mb {}",
                sandbox::MAX_DISK_MB,
                (sandbox::MAX_DISK_MB - 64) / 2
            )
        })
}

/// What the session measurements produced: `[loopback RTT, session exec]` and, unless
/// skipped, `[loopback TCP, upload, download]`.
struct SessionPhases {
    calls: [Series; 2],
    transfers: Option<[Series; 3]>,
}

/// Opens one Python session, measures calls and then transfers in it, and stops its VM
/// however that went.
async fn session_phases(
    scheduler: &Scheduler,
    runs: usize,
    transfer_bytes: u64,
    disk_mb: u32,
) -> Result<SessionPhases, i32> {
    eprintln!("sbx bench: one python session, home disk {disk_mb} MiB");
    let options = SessionOptions::new(Language::Python).disk_mb(disk_mb);
    let session = scheduler
        .session(options)
        .await
        .map_err(|e| fail("opening a python session", &e))?;
    let phases = async {
        let calls = session_calls(&session, runs.saturating_mul(SESSION_CALLS_PER_ROUND)).await?;
        let transfers = if transfer_bytes == 0 {
            None
        } else {
            Some(transfers(&session, transfer_bytes, runs.min(TRANSFER_REPS)).await?)
        };
        Ok(SessionPhases { calls, transfers })
    }
    .await;
    session.close().await;
    phases
}

/// Reports a library error with what the bench was doing, and gives the exit status.
fn fail(what: &str, e: &sandbox::Error) -> i32 {
    eprintln!("sbx bench: {what}: {e}");
    exit::for_error(e)
}

/// Reports an I/O error of the host side of the bench (temporary files, loopback sockets).
fn host_fail(what: &str, e: &io::Error) -> i32 {
    eprintln!("sbx bench: {what}: {e}");
    exit::INFRA
}

/// Runs `code` in the session and insists that it succeeded in the REPL that was already
/// there (`fresh_ok` for the call that starts it): a REPL restarting midway would put an
/// interpreter start into a round trip sample.
async fn call(session: &Session, code: &str, what: &str, fresh_ok: bool) -> Result<(), i32> {
    let r = session
        .exec(code, sandbox::DEFAULT_TIMEOUT, Vec::new())
        .await
        .map_err(|e| fail(what, &e))?;
    if r.exit_code != 0 || r.timed_out {
        eprintln!(
            "sbx bench: {what}: exited {}{}: {}",
            r.exit_code,
            if r.timed_out { " (timed out)" } else { "" },
            r.stderr_text()
        );
        return Err(exit::INFRA);
    }
    if !fresh_ok && r.repl.is_some_and(|repl| repl.fresh) {
        eprintln!("sbx bench: {what}: the session's REPL restarted, which a call must not do");
        return Err(exit::INFRA);
    }
    Ok(())
}

/// `calls` session calls of `pass`, each followed by one loopback round trip.
async fn session_calls(session: &Session, calls: usize) -> Result<[Series; 2], i32> {
    eprintln!("sbx bench: {calls} session calls of `pass`, interleaved with loopback round trips");
    let mut echo = Echo::start().map_err(|e| host_fail("loopback echo", &e))?;
    // The first call starts the REPL: that is an interpreter start, not a round trip.
    call(session, "pass", "session warm-up call", true).await?;
    echo.round_trip()
        .await
        .map_err(|e| host_fail("loopback round trip", &e))?;
    let mut loopback = Series::new("loopback RTT (unix socket)");
    let mut exec = Series::new("session exec(pass)");
    for _ in 0..calls {
        let t = Instant::now();
        call(session, "pass", "session call `pass`", false).await?;
        exec.samples.push(t.elapsed());
        let rtt = echo
            .round_trip()
            .await
            .map_err(|e| host_fail("loopback round trip", &e))?;
        loopback.samples.push(rtt);
    }
    Ok([loopback, exec])
}

/// A host loopback peer answering each fixed-size request with a fixed-size reply: the
/// host's floor for one framed round trip over a unix socket, the transport the host end
/// of the agent channel uses too. The peer task ends when `client` is dropped.
struct Echo {
    client: UnixStream,
    request: [u8; RTT_REQUEST_BYTES],
    reply: [u8; RTT_REPLY_BYTES],
}

impl Echo {
    fn start() -> io::Result<Echo> {
        let (client, mut server) = UnixStream::pair()?;
        tokio::spawn(async move {
            let mut request = [0u8; RTT_REQUEST_BYTES];
            let reply = [0u8; RTT_REPLY_BYTES];
            // Any error (the usual one: the client went away) ends the peer; the client
            // then sees the error on its own side.
            while server.read_exact(&mut request).await.is_ok() {
                if server.write_all(&reply).await.is_err() {
                    break;
                }
            }
        });
        let mut request = [0u8; RTT_REQUEST_BYTES];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut request);
        Ok(Echo {
            client,
            request,
            reply: [0u8; RTT_REPLY_BYTES],
        })
    }

    /// One write of the request, one read of the whole reply.
    async fn round_trip(&mut self) -> io::Result<Duration> {
        let t = Instant::now();
        self.client.write_all(&self.request).await?;
        self.client.read_exact(&mut self.reply).await?;
        Ok(t.elapsed())
    }
}

/// The file the transfers move, in a temporary directory removed when this is dropped
/// (including when the bench is interrupted and its future dropped).
struct Payload {
    dir: tempfile::TempDir,
    path: PathBuf,
    bytes: u64,
    sha256: [u8; 32],
}

impl Payload {
    /// Writes `bytes` pseudo-random bytes (blocking: run it off the async workers).
    fn create(bytes: u64) -> io::Result<Payload> {
        let dir = tempfile::Builder::new().prefix("sbx-bench-").tempdir()?;
        let path = dir.path().join("upload.bin");
        let mut file = std::fs::File::create(&path)?;
        let mut noise = rand::thread_rng();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rand::RngCore::fill_bytes(&mut noise, &mut buf[..n]);
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        Ok(Payload {
            dir,
            path,
            bytes,
            sha256: hasher.finalize().into(),
        })
    }
}

fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&buf[..n]),
        }
    }
}

/// Runs blocking host work (file generation, hashing) off the async workers.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, i32> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(host_fail(what, &e)),
        Err(e) => Err(host_fail(what, &io::Error::other(e))),
    }
}

/// `reps` repetitions of: the loopback TCP baseline, an upload, a download, a check that
/// the bytes came back unchanged, and removing the guest's copy.
async fn transfers(session: &Session, bytes: u64, reps: usize) -> Result<[Series; 3], i32> {
    let mib = bytes / MIB;
    eprintln!(
        "sbx bench: {reps}× uploading and downloading {mib} MiB, interleaved with loopback TCP"
    );
    let payload = blocking("creating the transfer file", move || Payload::create(bytes)).await?;
    let mut chunk = vec![0u8; TCP_CHUNK];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut chunk);
    let downloaded = payload.dir.path().join("download.bin");
    let mut tcp = Series::throughput(&format!("loopback TCP ({mib} MiB)"), bytes);
    let mut upload = Series::throughput(&format!("upload ({mib} MiB)"), bytes);
    let mut download = Series::throughput(&format!("download ({mib} MiB)"), bytes);
    for rep in 1..=reps {
        let d = loopback_tcp(bytes, &chunk)
            .await
            .map_err(|e| host_fail("loopback TCP", &e))?;
        tcp.samples.push(d);
        upload
            .samples
            .push(upload_once(session, &payload, rep).await?);
        download
            .samples
            .push(download_once(session, &payload, &downloaded, rep).await?);
        // Removed so that every repetition does the same: create a file, not replace one.
        let remove = format!("import os\nos.remove({GUEST_FILE_ABSOLUTE:?})");
        call(session, &remove, "removing the guest's copy", false).await?;
    }
    Ok([tcp, upload, download])
}

async fn upload_once(session: &Session, payload: &Payload, rep: usize) -> Result<Duration, i32> {
    let source = tokio::fs::File::open(&payload.path)
        .await
        .map_err(|e| host_fail(&payload.path.display().to_string(), &e))?;
    let t = Instant::now();
    let size = session
        .write_file_from(GUEST_FILE, source, false)
        .await
        .map_err(|e| fail(&format!("upload {rep}"), &e))?;
    let elapsed = t.elapsed();
    if size != payload.bytes {
        eprintln!(
            "sbx bench: upload {rep}: the guest stored {size} bytes of {}",
            payload.bytes
        );
        return Err(exit::TRANSFER);
    }
    Ok(elapsed)
}

/// Downloads the guest's copy to `local` and checks it is the bytes that were uploaded.
async fn download_once(
    session: &Session,
    payload: &Payload,
    local: &Path,
    rep: usize,
) -> Result<Duration, i32> {
    let mut sink = tokio::fs::File::create(local)
        .await
        .map_err(|e| host_fail(&local.display().to_string(), &e))?;
    let t = Instant::now();
    let size = session
        .read_file_to(GUEST_FILE, &mut sink)
        .await
        .map_err(|e| fail(&format!("download {rep}"), &e))?;
    let elapsed = t.elapsed();
    // `read_file_to` has flushed it: every byte is in the file.
    drop(sink);
    if size != payload.bytes {
        eprintln!(
            "sbx bench: download {rep}: got {size} bytes, uploaded {}",
            payload.bytes
        );
        return Err(exit::TRANSFER);
    }
    let path = local.to_path_buf();
    let got = blocking("hashing the downloaded file", move || sha256_file(&path)).await?;
    if got != payload.sha256 {
        // Which way were the bytes damaged? The guest's copy says.
        let guest = guest_sha256(session).await;
        let culprit = match &guest {
            Some(h) if *h == hex::encode(payload.sha256) => "the download changed them",
            Some(h) if *h == hex::encode(got) => "the upload changed them",
            Some(_) => "both ways changed them",
            None => "the guest's copy could not be hashed",
        };
        eprintln!(
            "sbx bench: download {rep}: the bytes differ from the upload ({culprit}): sha256 \
             uploaded {}, downloaded {}, guest's copy {}",
            hex::encode(payload.sha256),
            hex::encode(got),
            guest.as_deref().unwrap_or("unknown")
        );
        return Err(exit::TRANSFER);
    }
    Ok(elapsed)
}

/// The guest's own sha256 of its copy, for diagnosing a mismatch; `None` if that fails.
async fn guest_sha256(session: &Session) -> Option<String> {
    let r = session
        .exec(
            &sha256_program(GUEST_FILE_ABSOLUTE),
            sandbox::MAX_TIMEOUT,
            Vec::new(),
        )
        .await
        .ok()?;
    (r.exit_code == 0).then(|| r.stdout_text().trim().to_string())
}

/// Python that prints the sha256 of the file at `path` in hex, reading it in 1 MiB blocks
/// (the file may be larger than the guest's memory).
fn sha256_program(path: &str) -> String {
    format!(
        "import hashlib\nh = hashlib.sha256()\nwith open({path:?}, 'rb') as f:\n    \
         for block in iter(lambda: f.read(1 << 20), b''):\n        h.update(block)\nprint(h.hexdigest())"
    )
}

/// Pushes `bytes` through a fresh host loopback TCP connection in `chunk`-sized writes;
/// the time runs from the first write until the reader has seen every byte and the end.
async fn loopback_tcp(bytes: u64, chunk: &[u8]) -> io::Result<Duration> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let mut buf = vec![0u8; TCP_CHUNK];
        let mut received: u64 = 0;
        loop {
            match stream.read(&mut buf).await? {
                0 => return Ok::<u64, io::Error>(received),
                n => received += n as u64,
            }
        }
    });
    let written = async {
        let mut stream = TcpStream::connect(addr).await?;
        let t = Instant::now();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stream.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        stream.shutdown().await?;
        Ok::<Instant, io::Error>(t)
    }
    .await;
    let started = match written {
        Ok(t) => t,
        Err(e) => {
            // The reader may still be waiting for a connection that will never come.
            reader.abort();
            return Err(e);
        }
    };
    let received = reader.await.map_err(io::Error::other)??;
    let elapsed = started.elapsed();
    if received != bytes {
        return Err(io::Error::other(format!(
            "the reader got {received} of {bytes} bytes"
        )));
    }
    Ok(elapsed)
}

fn ratio(value: Duration, base: Duration) -> String {
    if base.is_zero() {
        "-".to_string()
    } else {
        format!("{:.2}×", value.as_secs_f64() / base.as_secs_f64())
    }
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
        println!(
            "{:<28} {:>9.1} {:>9.1} {:>9} {:>10}",
            s.name,
            p50.as_secs_f64() * 1000.0,
            s.percentile(0.95).as_secs_f64() * 1000.0,
            ratio(p50, floor),
            native.map_or("-".to_string(), |n| ratio(p50, n)),
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

/// `[loopback RTT, session exec]`; three decimals, since the loopback is microseconds.
fn print_session_table(calls: &[Series; 2]) {
    let base = calls[0].percentile(0.5);
    println!(
        "{:<28} {:>9} {:>9} {:>11}",
        "session call", "p50 ms", "p95 ms", "÷ loopback"
    );
    for s in calls {
        let p50 = s.percentile(0.5);
        println!(
            "{:<28} {:>9.3} {:>9.3} {:>11}",
            s.name,
            p50.as_secs_f64() * 1000.0,
            s.percentile(0.95).as_secs_f64() * 1000.0,
            ratio(p50, base),
        );
    }
}

/// `[loopback TCP, upload, download]`: the median of the repetitions, as time and as MiB/s;
/// the ratio is time over the loopback's time, like the other tables' (so 10× is ten
/// times slower).
fn print_transfer_table(transfers: &[Series; 3]) {
    let base = transfers[0].percentile(0.5);
    println!(
        "{:<28} {:>9} {:>9} {:>11}",
        "file transfer", "median ms", "MiB/s", "÷ loopback"
    );
    for s in transfers {
        let median = s.percentile(0.5);
        println!(
            "{:<28} {:>9.1} {:>9} {:>11}",
            s.name,
            median.as_secs_f64() * 1000.0,
            s.mib_per_s()
                .map_or("-".to_string(), |rate| format!("{rate:.1}")),
            ratio(median, base),
        );
    }
}

/// The cold-start goal: a Python run costs at most this multiple of a bare boot.
const PYTHON_TARGET: f64 = 1.6;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Series::new("x");
        s.samples = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(s.percentile(0.5), Duration::from_millis(5));
        assert_eq!(s.percentile(0.95), Duration::from_millis(10));
        let mut one = Series::new("y");
        one.samples = vec![Duration::from_millis(7)];
        assert_eq!(one.percentile(0.95), Duration::from_millis(7));
    }

    #[test]
    fn throughput_is_bytes_over_the_median() {
        let mut s = Series::throughput("t", 64 * MIB);
        s.samples = [4000, 2000, 1000].map(Duration::from_millis).to_vec();
        assert_eq!(s.mib_per_s(), Some(32.0));
        assert_eq!(Series::new("latency").mib_per_s(), None);
        assert_eq!(Series::throughput("empty", MIB).mib_per_s(), None);
    }

    #[test]
    fn session_disk_fits_the_file() {
        assert_eq!(session_disk_mb(0), Ok(sandbox::DEFAULT_DISK_MB));
        assert_eq!(session_disk_mb(64), Ok(sandbox::DEFAULT_DISK_MB));
        assert_eq!(session_disk_mb(4096), Ok(8256));
        let largest = u64::from((sandbox::MAX_DISK_MB - 64) / 2);
        assert!(session_disk_mb(largest).is_ok());
        assert!(session_disk_mb(largest + 1).is_err());
        assert!(session_disk_mb(u64::MAX).is_err());
        for mb in [1, 64, 1000, largest] {
            let disk = u64::from(session_disk_mb(mb).unwrap());
            assert!(disk >= mb * 2, "{mb} MiB on a {disk} MiB disk");
        }
    }

    #[tokio::test]
    async fn loopback_baselines_move_every_byte() {
        let mut echo = Echo::start().unwrap();
        assert!(echo.round_trip().await.is_ok());
        let chunk = vec![7u8; TCP_CHUNK];
        assert!(loopback_tcp(3 * TCP_CHUNK as u64 + 5, &chunk).await.is_ok());
    }

    #[test]
    fn sha256_program_agrees_with_the_host() {
        let payload = Payload::create(MIB + 3).unwrap();
        let path = payload.path.to_str().unwrap();
        // The guest runs this under its python3; without one on the host there is nothing
        // to check it against here.
        let Ok(out) = std::process::Command::new("python3")
            .args(["-c", &sha256_program(path)])
            .output()
        else {
            return;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            hex::encode(payload.sha256)
        );
    }

    #[test]
    fn payload_hash_matches_its_file() {
        let payload = Payload::create(MIB + 3).unwrap();
        assert_eq!(std::fs::metadata(&payload.path).unwrap().len(), MIB + 3);
        assert_eq!(sha256_file(&payload.path).unwrap(), payload.sha256);
        let dir = payload.dir.path().to_path_buf();
        drop(payload);
        assert!(!dir.exists());
    }
}
