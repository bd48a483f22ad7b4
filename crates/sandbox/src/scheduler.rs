//! [`Scheduler`]: turns a [`RunRequest`] into an [`ExecutionResult`] on a fresh microVM.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::Language;
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore};
use vmm::{AccelChoice, AccelVerdict, Accelerator, HomeDiskSpec, QemuInfo, Registry, Vm, VmSpec};

use crate::config::Config;
use crate::error::{Error, PermanentError, TransientError};
use crate::exec::{millis, Cell};
use crate::netproc::{self, NetProcess};
use crate::network::{ExposedPort, NetworkPolicy, Outbound, PortMapping};
use crate::request::RunRequest;
use crate::result::{ExecutionResult, OutputChunk, Timing};
use crate::session::{Session, SessionOptions, WeakSession};
use crate::validate::{validate, validate_disk, validate_idle_timeout, validate_memory};

/// A VM booted for one run or one session, holding its scheduler slot.
pub(crate) struct BootedVm {
    pub vm: Vm,
    /// Released when the VM is done with (dropped with it).
    pub slot: OwnedSemaphorePermit,
    pub accelerator: Accelerator,
    /// Images, accelerator and waiting for the slot.
    pub setup: Duration,
    pub boot: Duration,
    pub boot_retries: u32,
    /// The VM's network process, when it has a NIC.
    pub net: Option<NetProcess>,
}

/// What a VM's network should be: the policy and the forwards.
#[derive(Clone, Copy)]
pub(crate) struct NetRequest<'a> {
    pub policy: &'a NetworkPolicy,
    pub ports: &'a [PortMapping],
}

impl NetRequest<'_> {
    /// A NIC only when something will use it: with no outbound traffic and no forwards the
    /// guest has loopback alone.
    fn needs_nic(&self) -> bool {
        self.policy.outbound != Outbound::None || !self.ports.is_empty()
    }
}

/// Receives what a run reports while it is in progress.
pub trait RunObserver: Send {
    /// A piece of output, as it arrives.
    fn output(&mut self, chunk: OutputChunk);
    /// The forwarded ports, once they are listening and before the code starts (called
    /// only when ports were exposed).
    fn ports_ready(&mut self, ports: &[ExposedPort]) {
        let _ = ports;
    }
}

/// Adapts an output callback to a [`RunObserver`].
struct OutputOnly<F>(F);

impl<F: FnMut(OutputChunk) + Send> RunObserver for OutputOnly<F> {
    fn output(&mut self, chunk: OutputChunk) {
        (self.0)(chunk)
    }
}

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
    slots: Arc<Semaphore>,
    /// Open sessions, closed by [`Scheduler::shutdown`].
    sessions: std::sync::Mutex<Vec<WeakSession>>,
    /// The network process executable, installed on first use.
    net_helper: OnceCell<std::path::PathBuf>,
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
        let slots = Arc::new(Semaphore::new(config.max_concurrent_vms.max(1)));
        Ok(Scheduler {
            inner: Arc::new(Inner {
                config,
                images,
                qemu,
                registry,
                verdict: OnceCell::new(),
                slots,
                sessions: std::sync::Mutex::new(Vec::new()),
                net_helper: OnceCell::new(),
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
        on_output: impl FnMut(OutputChunk) + Send,
    ) -> Result<ExecutionResult, Error> {
        self.run_observed(request, &mut OutputOnly(on_output)).await
    }

    /// Runs code, telling `observer` about output and, before the code starts, the
    /// forwarded ports (so a caller can print or use the URLs while the code runs).
    pub async fn run_observed(
        &self,
        request: RunRequest,
        observer: &mut impl RunObserver,
    ) -> Result<ExecutionResult, Error> {
        let started = Instant::now();
        validate(&request)?;
        let net = NetRequest {
            policy: &request.network,
            ports: &request.expose_ports,
        };
        let mut booted = self
            .start_vm(request.language, request.memory_mb, request.disk_mb, net)
            .await?;
        let setup = booted.setup;
        let exposed_ports = booted
            .net
            .as_ref()
            .map(|n| n.exposed_ports().to_vec())
            .unwrap_or_default();
        if !exposed_ports.is_empty() {
            observer.ports_ready(&exposed_ports);
        }

        let exec_started = Instant::now();
        let cell = Cell {
            language: request.language,
            code: &request.code,
            env: &request.env,
            timeout: request.timeout,
            extension: request.extension.as_deref(),
            persistent: false,
        };
        let mut on_output = |chunk| observer.output(chunk);
        let outcome = netproc::execute_with_network(
            &mut booted.vm,
            booted.net.as_mut(),
            &cell,
            &mut on_output,
        )
        .await;
        let execute_elapsed = exec_started.elapsed();
        booted.vm.shutdown().await;
        let (outcome, network) = outcome?;
        let completion = outcome.completion;

        Ok(ExecutionResult {
            language: request.language,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: completion.exit_code,
            timed_out: completion.timed_out,
            stdout_truncated: completion.stdout_truncated,
            stderr_truncated: completion.stderr_truncated,
            timing: Timing {
                setup_ms: millis(setup),
                boot_ms: millis(booted.boot),
                execute_ms: millis(execute_elapsed),
                total_ms: millis(started.elapsed()),
                boot_retries: booted.boot_retries,
            },
            accelerator: booted.accelerator,
            repl: None,
            exposed_ports,
            network,
        })
    }

    /// Opens a session: a VM that stays up, keeping its REPL state and files across calls,
    /// until [`Session::close`], its idle timeout, or the scheduler's shutdown.
    ///
    /// ```no_run
    /// # async fn demo(scheduler: sandbox::Scheduler) -> Result<(), sandbox::Error> {
    /// use sandbox::{Language, SessionOptions};
    /// use std::time::Duration;
    ///
    /// let session = scheduler.session(SessionOptions::new(Language::Python)).await?;
    /// session.exec("x = 6 * 7", Duration::from_secs(10), vec![]).await?;
    /// let result = session.exec("print(x)", Duration::from_secs(10), vec![]).await?;
    /// assert_eq!(result.stdout, b"42\n");
    /// session.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn session(&self, options: SessionOptions) -> Result<Session, Error> {
        validate_memory(options.memory_mb)?;
        validate_disk(options.disk_mb)?;
        validate_idle_timeout(options.idle_timeout)?;
        crate::network::validate_network(&options.network, &options.expose_ports)?;
        let net = NetRequest {
            policy: &options.network,
            ports: &options.expose_ports,
        };
        let booted = self
            .start_vm(options.language, options.memory_mb, options.disk_mb, net)
            .await?;
        let session = Session::start(options, booted);
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        sessions.retain(|s| s.strong_count() > 0);
        sessions.push(session.downgrade());
        Ok(session)
    }

    /// Images, accelerator and a VM slot, then a booted VM holding that slot.
    pub(crate) async fn start_vm(
        &self,
        language: Language,
        memory_mb: u32,
        disk_mb: u32,
        net: NetRequest<'_>,
    ) -> Result<BootedVm, Error> {
        let started = Instant::now();
        let images = match self
            .inner
            .images
            .lookup(language)
            .map_err(PermanentError::Images)?
        {
            Some(found) => found,
            None => self
                .ensure_images(&[language], Arc::new(images::NoProgress))
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| PermanentError::Internal("no image returned by build".into()))?,
        };
        if net.needs_nic() && !self.inner.qemu.supports_netdev_stream() {
            return Err(PermanentError::Config(format!(
                "{} has no `-netdev stream` (QEMU 7.2 or later), which the guest's network needs; run without network flags or use a newer QEMU (SBX_QEMU)",
                self.inner.qemu.version_string
            ))
            .into());
        }
        let verdict = self.accelerator().await?;
        let slot = self
            .inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PermanentError::Internal("scheduler is shut down".into()))?;

        let spec = VmSpec {
            qemu: self.inner.qemu.clone(),
            accelerator: verdict.accelerator,
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
            rootfs: Some(images.rootfs.clone()),
            memory_mb,
            vcpus: self.inner.config.vcpus,
            boot_timeout: self.inner.config.boot_timeout,
            extra_cmdline: Vec::new(),
            nic: net.needs_nic(),
            home_disk: Some(HomeDiskSpec {
                dir: self.inner.config.scratch_dir.clone(),
                size_mb: disk_mb,
            }),
        };
        let setup = started.elapsed();
        let boot_started = Instant::now();
        let (vm, boot_retries) =
            vmm::boot_with_retry(&spec, &self.inner.registry, &self.inner.config.boot_retry)
                .await
                .map_err(|e| boot_error(e, self.inner.config.boot_retry.max_retries))?;
        let net = match self.start_network(&vm, net).await {
            Ok(net) => net,
            Err(e) => {
                vm.shutdown().await;
                return Err(e);
            }
        };
        Ok(BootedVm {
            vm,
            slot,
            accelerator: verdict.accelerator,
            setup,
            boot: boot_started.elapsed(),
            boot_retries,
            net,
        })
    }

    /// Starts the VM's network process when it has a NIC.
    async fn start_network(
        &self,
        vm: &Vm,
        net: NetRequest<'_>,
    ) -> Result<Option<NetProcess>, Error> {
        if !net.needs_nic() {
            return Ok(None);
        }
        let config = &self.inner.config;
        let helper = self
            .inner
            .net_helper
            .get_or_try_init(|| async {
                crate::net_helper::helper_path(config.net_helper.as_deref(), &config.cache_dir)
            })
            .await?;
        let process_config =
            netproc::config_for(&vm.nic_socket(), net.policy, net.ports, config.upstream_dns);
        Ok(Some(NetProcess::start(vm, helper, process_config).await?))
    }

    /// Waits for every run in flight to finish and refuses new ones. Every VM this scheduler
    /// started is gone when this returns (each run owns its VM and tears it down itself;
    /// a cancelled run's VM is killed when its future is dropped).
    pub async fn shutdown(&self) {
        let open: Vec<_> = {
            let mut sessions = self
                .inner
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            sessions.drain(..).filter_map(|s| s.upgrade()).collect()
        };
        for session in open {
            session.close_because("the scheduler was shut down").await;
        }
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
