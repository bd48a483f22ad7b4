//! [`Scheduler`]: turns a [`RunRequest`] into an [`ExecutionResult`] on a fresh microVM.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::{Completion, ExecRequest, GuestMessage, HostMessage, Language, Stream};
use tokio::sync::{OnceCell, Semaphore};
use vmm::{AccelChoice, AccelVerdict, Accelerator, QemuInfo, Registry, Vm, VmSpec};

use crate::config::Config;
use crate::error::{Error, PermanentError, TransientError};
use crate::request::{RunRequest, STDERR_CAP, STDOUT_CAP};
use crate::result::{ExecutionResult, OutputChunk, Timing};
use crate::validate::validate;

/// How long past the code's own timeout the host waits for the guest to report before it
/// kills the VM itself. Covers the guest's SIGTERM grace and a slow, loaded TCG guest.
const HOST_GRACE: Duration = Duration::from_secs(8);

/// Runs code in throwaway microVMs.
///
/// ```no_run
/// # async fn demo() -> Result<(), sandbox::Error> {
/// use sandbox::{Config, Language, RunRequest, Scheduler};
///
/// let scheduler = Scheduler::new(Config::from_env()?).await?;
/// let result = scheduler.run(RunRequest::new(Language::Python, "print(6*7)")).await?;
/// assert_eq!(result.stdout, b"42\n");
/// scheduler.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    images: images::ImageStore,
    qemu: QemuInfo,
    registry: Arc<Registry>,
    verdict: OnceCell<AccelVerdict>,
    slots: Semaphore,
}

impl Scheduler {
    /// Finds QEMU and opens the process registry, reaping VMs left by a crashed process.
    /// Images are built (or checked) on first use, not here.
    pub async fn new(config: Config) -> Result<Scheduler, Error> {
        let qemu = vmm::find_qemu(config.qemu.as_deref()).map_err(PermanentError::Qemu)?;
        let registry = Arc::new(Registry::open(&config.runtime_dir).map_err(|e| {
            PermanentError::Config(format!(
                "runtime dir {} (set SBX_RUNTIME_DIR to move it): {e}",
                config.runtime_dir.display()
            ))
        })?);
        let images = images::ImageStore::new(config.cache_dir.clone());
        let slots = Semaphore::new(config.max_concurrent_vms.max(1));
        Ok(Scheduler {
            inner: Arc::new(Inner {
                config,
                images,
                qemu,
                registry,
                verdict: OnceCell::new(),
                slots,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn qemu(&self) -> &QemuInfo {
        &self.inner.qemu
    }

    /// The process registry, for emergency kills (see [`Registry::kill_all`]).
    pub fn registry(&self) -> Arc<Registry> {
        self.inner.registry.clone()
    }

    /// Builds any missing images for these languages (no-op when they are cached).
    pub async fn ensure_images(
        &self,
        languages: &[Language],
        progress: Arc<dyn images::BuildProgress>,
    ) -> Result<Vec<images::GuestImages>, Error> {
        let store = self.inner.images.clone();
        let offline = self.inner.config.offline;
        let langs = languages.to_vec();
        let built =
            tokio::task::spawn_blocking(move || store.ensure(&langs, offline, progress.as_ref()))
                .await
                .map_err(|e| PermanentError::Internal(format!("image build task: {e}")))?;
        Ok(built.map_err(PermanentError::Images)?)
    }

    /// The accelerator verdict, probing once per scheduler (and cached on disk by `vmm`).
    pub async fn accelerator(&self) -> Result<AccelVerdict, Error> {
        let boot = match self
            .inner
            .images
            .lookup_boot()
            .map_err(PermanentError::Images)?
        {
            Some(b) => b,
            None => {
                // No languages: only the kernel and initramfs the probe boots.
                self.ensure_images(&[], Arc::new(images::NoProgress))
                    .await?;
                self.inner
                    .images
                    .lookup_boot()
                    .map_err(PermanentError::Images)?
                    .ok_or_else(|| {
                        PermanentError::Internal("boot images missing after build".into())
                    })?
            }
        };
        let inner = &self.inner;
        let verdict = inner
            .verdict
            .get_or_init(|| async {
                vmm::probe_accelerator(
                    &inner.qemu,
                    &boot.kernel,
                    &boot.initramfs,
                    &inner.config.cache_dir,
                    inner.config.accelerator,
                )
                .await
            })
            .await
            .clone();
        if verdict.accelerator == Accelerator::Kvm
            && inner.config.accelerator == AccelChoice::Force(Accelerator::Kvm)
        {
            // Forcing KVM skips the probe, but a KVM that cannot boot a guest makes every
            // boot hang until its timeout. The probe (cached after the first time) tells us
            // up front, so fail at once with its reason instead.
            let probed = vmm::probe_accelerator(
                &inner.qemu,
                &boot.kernel,
                &boot.initramfs,
                &inner.config.cache_dir,
                AccelChoice::Auto,
            )
            .await;
            if let Some(why) = probed.kvm_rejected_because {
                return Err(PermanentError::Config(format!(
                    "SBX_ACCEL=kvm, but KVM cannot boot a guest on this host: {why}; unset SBX_ACCEL or set it to tcg"
                ))
                .into());
            }
        }
        Ok(verdict)
    }

    /// Runs code to completion and returns its result.
    pub async fn run(&self, request: RunRequest) -> Result<ExecutionResult, Error> {
        self.run_streaming(request, |_| {}).await
    }

    /// Runs code, calling `on_output` with each piece of output as it arrives.
    ///
    /// Dropping the returned future cancels the run: the VM is killed and its files removed.
    pub async fn run_streaming(
        &self,
        request: RunRequest,
        mut on_output: impl FnMut(OutputChunk) + Send,
    ) -> Result<ExecutionResult, Error> {
        let started = Instant::now();
        validate(&request)?;
        let images = match self
            .inner
            .images
            .lookup(request.language)
            .map_err(PermanentError::Images)?
        {
            Some(found) => found,
            None => self
                .ensure_images(&[request.language], Arc::new(images::NoProgress))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| PermanentError::Internal("no image returned by build".into()))?,
        };
        let verdict = self.accelerator().await?;
        let _slot = self
            .inner
            .slots
            .acquire()
            .await
            .map_err(|_| PermanentError::Internal("scheduler is shut down".into()))?;

        let spec = VmSpec {
            qemu: self.inner.qemu.clone(),
            accelerator: verdict.accelerator,
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
            rootfs: Some(images.rootfs.clone()),
            memory_mb: request.memory_mb,
            vcpus: self.inner.config.vcpus,
            boot_timeout: self.inner.config.boot_timeout,
            extra_cmdline: Vec::new(),
        };
        let setup = started.elapsed();

        let boot_started = Instant::now();
        let (mut vm, boot_retries) =
            vmm::boot_with_retry(&spec, &self.inner.registry, &self.inner.config.boot_retry)
                .await
                .map_err(|e| boot_error(e, self.inner.config.boot_retry.max_retries))?;
        let boot = boot_started.elapsed();

        let exec_started = Instant::now();
        let outcome = execute(&mut vm, &request, &mut on_output).await;
        let execute_elapsed = exec_started.elapsed();
        vm.shutdown().await;
        let (completion, stdout, stderr) = outcome?;

        Ok(ExecutionResult {
            language: request.language,
            stdout,
            stderr,
            exit_code: completion.exit_code,
            timed_out: completion.timed_out,
            stdout_truncated: completion.stdout_truncated,
            stderr_truncated: completion.stderr_truncated,
            timing: Timing {
                setup_ms: millis(setup),
                boot_ms: millis(boot),
                execute_ms: millis(execute_elapsed),
                total_ms: millis(started.elapsed()),
                boot_retries,
            },
            accelerator: verdict.accelerator,
        })
    }

    /// Waits for every run in flight to finish and refuses new ones. Every VM this scheduler
    /// started is gone when this returns (each run owns its VM and tears it down itself;
    /// a cancelled run's VM is killed when its future is dropped).
    pub async fn shutdown(&self) {
        let all = self.inner.config.max_concurrent_vms.max(1) as u32;
        if let Ok(permits) = self.inner.slots.acquire_many(all).await {
            permits.forget();
        }
        self.inner.slots.close();
    }
}

fn boot_error(err: vmm::BootError, max_retries: u32) -> Error {
    if err.is_transient() {
        TransientError::Boot {
            retries: max_retries,
            source: err,
        }
        .into()
    } else {
        PermanentError::Boot(err).into()
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

type Outcome = (Completion, Vec<u8>, Vec<u8>);

/// Sends the code and collects output until the guest reports completion.
async fn execute(
    vm: &mut Vm,
    request: &RunRequest,
    on_output: &mut (impl FnMut(OutputChunk) + Send),
) -> Result<Outcome, Error> {
    let exec = ExecRequest {
        language: request.language,
        code: request.code.clone(),
        env: request.env.clone(),
        timeout_ms: millis(request.timeout),
        stdout_cap: STDOUT_CAP,
        stderr_cap: STDERR_CAP,
        unix_time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0),
        extension: request.extension.clone(),
        entropy: rand::random::<[u8; 32]>().to_vec(),
        persistent: false,
    };
    vm.send(&HostMessage::Exec(exec))
        .await
        .map_err(|e| match e {
            // The request itself cannot be framed: retrying the same one cannot help.
            vmm::ChannelError::Malformed(_) => Error::from(PermanentError::Internal(format!(
                "the request cannot be sent: {e}"
            ))),
            other => TransientError::Dispatch(other).into(),
        })?;

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let deadline = tokio::time::Instant::now() + request.timeout + HOST_GRACE;
    loop {
        let msg = match tokio::time::timeout_at(deadline, vm.recv()).await {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => {
                return Err(Error::OutcomeUnknown {
                    reason: e.to_string(),
                })
            }
            Err(_) => return Ok(host_timeout(request, stdout, stderr, on_output)),
        };
        match msg {
            GuestMessage::Output { stream, data } => {
                // The guest enforces the caps; the host enforces them again so that a
                // misbehaving guest cannot make the host buffer without bound.
                let (buf, cap) = match stream {
                    Stream::Stdout => (&mut stdout, STDOUT_CAP),
                    Stream::Stderr => (&mut stderr, STDERR_CAP + 1024),
                };
                let room = (cap as usize).saturating_sub(buf.len());
                let data = if data.len() > room {
                    data[..room].to_vec()
                } else {
                    data
                };
                if data.is_empty() {
                    continue;
                }
                buf.extend_from_slice(&data);
                on_output(OutputChunk { stream, data });
            }
            GuestMessage::Completed(completion) => return Ok((completion, stdout, stderr)),
            GuestMessage::Failed { message } => {
                return Err(PermanentError::GuestCannotRun(message).into())
            }
            GuestMessage::Ready { .. } => {
                return Err(Error::OutcomeUnknown {
                    reason: "the guest agent restarted during the run".into(),
                })
            }
            GuestMessage::FileData { .. }
            | GuestMessage::FileDone { .. }
            | GuestMessage::FileFailed { .. }
            | GuestMessage::Listing { .. } => {
                return Err(Error::OutcomeUnknown {
                    reason: "the guest agent answered a file request during a run".into(),
                })
            }
        }
    }
}

/// The guest did not report within timeout + grace: the host kills the VM (by dropping it
/// after return) and reports a timeout, which is what happened from the caller's view.
fn host_timeout(
    request: &RunRequest,
    stdout: Vec<u8>,
    mut stderr: Vec<u8>,
    on_output: &mut (impl FnMut(OutputChunk) + Send),
) -> Outcome {
    let note = format!(
        "\n[sandbox] execution timed out after {} s (the VM was stopped by the host)\n",
        request.timeout.as_secs_f64()
    )
    .into_bytes();
    stderr.extend_from_slice(&note);
    on_output(OutputChunk {
        stream: Stream::Stderr,
        data: note,
    });
    let completion = Completion {
        exit_code: -1,
        timed_out: true,
        stdout_truncated: false,
        stderr_truncated: false,
        spawn_ms: 0,
        run_ms: millis(request.timeout + HOST_GRACE),
        repl_fresh: false,
        repl_lost: false,
    };
    (completion, stdout, stderr)
}
