//! A booted microVM with a connected agent channel, and the probe-mode boot used by the
//! accelerator probe and the boot-floor benchmark.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{GuestMessage, HostMessage, PROTOCOL_VERSION};
use tokio::time::MissedTickBehavior;

use crate::channel::{connect_retrying, AgentChannel, Received};
use crate::command::{qemu_args, Accelerator, BootMode, CommandSpec};
use crate::error::{BootError, ChannelError, VmmError};
use crate::host::host_tsc_khz;
use crate::instance::Instance;
use crate::qemu::QemuInfo;
use crate::registry::Registry;
use crate::scratch::{HomeDiskSpec, ScratchDisk};

/// How often a waiting reader checks the QEMU process (exit, stopped, zombie).
const LIVENESS_INTERVAL: Duration = Duration::from_millis(100);
/// How often to retry connecting while QEMU creates its socket (~15 ms after spawn).
const CONNECT_INTERVAL: Duration = Duration::from_millis(5);
/// After the socket reports EOF, how long to wait for QEMU's exit status before calling it
/// a plain closed channel.
const EOF_EXIT_GRACE: Duration = Duration::from_millis(500);
/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Everything needed to boot one VM. The caller decides the accelerator (see
/// [`crate::probe_accelerator`]) and the image paths.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub qemu: QemuInfo,
    pub accelerator: Accelerator,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: Option<PathBuf>,
    pub memory_mb: u32,
    pub vcpus: u32,
    /// From spawn to `Ready` (or, for [`boot_to_poweroff`], to QEMU's exit).
    pub boot_timeout: Duration,
    /// Appended to the kernel command line (e.g. for the init).
    pub extra_cmdline: Vec<String>,
    /// A fresh disk for `/home/user`; without one the guest keeps its home in memory.
    pub home_disk: Option<HomeDiskSpec>,
    /// Give the guest a NIC, backed by the unix socket [`Vm::nic_socket`] names; without
    /// one the guest has only loopback. Something must connect to the socket and carry
    /// the frames (the `net` crate's process, started with [`Vm::spawn_helper`]).
    pub nic: bool,
}

/// The NIC's socket in the VM's work dir.
const NIC_SOCKET: &str = "net.sock";

impl VmSpec {
    /// A missing image would make QEMU exit at once, which looks transient; it is not, so
    /// it is reported as a setup error before spawning.
    fn check_images(&self) -> Result<(), BootError> {
        let images = [
            Some(&self.kernel),
            Some(&self.initramfs),
            self.rootfs.as_ref(),
        ];
        for path in images.into_iter().flatten() {
            std::fs::metadata(path).map_err(|e| VmmError::Io {
                action: "checking guest image",
                path: path.clone(),
                source: e,
            })?;
        }
        Ok(())
    }

    fn command<'a>(
        &'a self,
        console_log: &'a Path,
        mode: BootMode,
        home_fds: Option<[RawFd; 2]>,
        nic_socket: Option<&'a Path>,
    ) -> Vec<std::ffi::OsString> {
        qemu_args(&CommandSpec {
            qemu: &self.qemu,
            accelerator: self.accelerator,
            kernel: &self.kernel,
            initramfs: &self.initramfs,
            rootfs: self.rootfs.as_deref(),
            memory_mb: self.memory_mb,
            vcpus: self.vcpus,
            console_log,
            tsc_khz: host_tsc_khz(),
            extra_cmdline: &self.extra_cmdline,
            mode,
            home_fds,
            nic_socket,
        })
    }
}

/// A running VM whose agent said `Ready`. Dropping it kills QEMU and cleans up
/// synchronously; prefer [`Vm::shutdown`] in async code.
#[derive(Debug)]
pub struct Vm {
    inst: Instance,
    channel: AgentChannel,
    boot_time: Duration,
    guest_uptime_at_ready: Duration,
}

impl Vm {
    /// One attempt: spawn QEMU, connect the agent socket, wait for `GuestMessage::Ready`
    /// (protocol version checked) within `spec.boot_timeout`. On failure the QEMU is gone.
    pub async fn boot(spec: &VmSpec, registry: &Registry) -> Result<Vm, BootError> {
        spec.check_images()?;
        let home = match &spec.home_disk {
            Some(disk) => Some(ScratchDisk::create(disk).await?),
            None => None,
        };
        let home_fds = home.as_ref().map(ScratchDisk::fds);
        let inherit: Vec<RawFd> = home_fds.map(Vec::from).unwrap_or_default();
        let mut inst = Instance::spawn(registry, &spec.qemu.path, &inherit, |work| {
            let socket = work.join("agent.sock");
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(BootError::SocketPathTooLong { path: socket, len });
            }
            let nic = work.join(NIC_SOCKET);
            Ok(spec.command(
                &work.join("console.log"),
                BootMode::Agent { socket },
                home_fds,
                spec.nic.then_some(nic.as_path()),
            ))
        })
        .await?;
        // QEMU holds its own descriptors now; the image lives exactly as long as it does.
        drop(home);
        let deadline = inst.spawned_at() + spec.boot_timeout;
        let result = tokio::time::timeout_at(deadline.into(), wait_ready(&mut inst)).await;
        let outcome = match result {
            Ok(Ok((channel, uptime_ms))) => Ok((channel, uptime_ms)),
            Ok(Err(e)) => Err(e),
            Err(_elapsed) => Err(BootError::Timeout {
                timeout: spec.boot_timeout,
                console_tail: inst.console_tail(),
            }),
        };
        match outcome {
            Ok((channel, uptime_ms)) => {
                let boot_time = inst.spawned_at().elapsed();
                tracing::debug!(pid = inst.pid(), ?boot_time, "VM ready");
                Ok(Vm {
                    inst,
                    channel,
                    boot_time,
                    guest_uptime_at_ready: Duration::from_millis(uptime_ms),
                })
            }
            Err(e) => {
                inst.shutdown().await;
                Err(e)
            }
        }
    }

    pub async fn send(&mut self, msg: &HostMessage) -> Result<(), ChannelError> {
        // A write to a socket whose QEMU is gone fails with EPIPE; report the exit instead.
        match self.channel.send(msg).await {
            Ok(()) => Ok(()),
            Err(ChannelError::Io(e)) => {
                self.inst.check_alive()?;
                Err(ChannelError::Io(e))
            }
            Err(e) => Err(e),
        }
    }

    /// The next message from the agent. While waiting, checks the QEMU process every
    /// ~100 ms and fails fast if it exited, is stopped (`T`/`t`) or a zombie. Cancel-safe.
    pub async fn recv(&mut self) -> Result<GuestMessage, ChannelError> {
        recv_watched(&mut self.inst, &mut self.channel).await
    }

    /// A message that has already arrived, without waiting (for noticing an early answer
    /// while streaming a long request).
    pub fn try_recv(&mut self) -> Result<Option<GuestMessage>, ChannelError> {
        self.channel.try_recv()
    }

    pub fn pid(&self) -> u32 {
        self.inst.pid()
    }

    /// Host wall time from spawning QEMU to `Ready`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Guest uptime reported in `Ready` (kernel + init + agent start, guest clock).
    pub fn guest_uptime_at_ready(&self) -> Duration {
        self.guest_uptime_at_ready
    }

    /// The VM's private work dir (removed at teardown): a place for further sockets.
    pub fn work_dir(&self) -> &Path {
        self.inst.work_dir()
    }

    /// The unix socket the guest's NIC is behind (QEMU listens on it), when the spec asked
    /// for a NIC.
    pub fn nic_socket(&self) -> PathBuf {
        self.inst.path_in_work_dir(NIC_SOCKET)
    }

    /// Starts a helper process that belongs to this VM: it joins QEMU's process group, so
    /// every teardown path that kills the VM (drop, shutdown, a second Ctrl+C, reaping after
    /// a crash) kills it too, and it dies with this process (`PR_SET_PDEATHSIG`). Its stdin
    /// and stdout are pipes for the caller; stderr goes to `<name>.stderr` in the work dir.
    pub fn spawn_helper(
        &self,
        name: &str,
        program: &Path,
        args: &[std::ffi::OsString],
    ) -> std::io::Result<tokio::process::Child> {
        let log = self.inst.path_in_work_dir(&format!("{name}.stderr"));
        crate::process::spawn_helper(program, args, &log, self.inst.pid())
    }

    /// The last ~2 KB of the serial console, for error messages.
    pub fn console_tail(&self) -> String {
        self.inst.console_tail()
    }

    /// SIGKILL the process group, reap, remove the work dir and registry entry.
    pub async fn shutdown(mut self) {
        self.inst.shutdown().await;
    }
}

/// Connects to the agent socket and waits for a valid `Ready`. The caller bounds it.
async fn wait_ready(inst: &mut Instance) -> Result<(AgentChannel, u64), BootError> {
    let socket = inst.path_in_work_dir("agent.sock");
    // Connection errors only mean "not listening yet"; QEMU's death is the real failure.
    let mut channel = connect_retrying(&socket, CONNECT_INTERVAL, |_err| inst.check_alive().err())
        .await
        .map_err(|e| boot_error(inst, e))?;
    match recv_watched(inst, &mut channel).await {
        Ok(GuestMessage::Ready { version, uptime_ms }) if version == PROTOCOL_VERSION => {
            Ok((channel, uptime_ms))
        }
        Ok(GuestMessage::Ready { version, .. }) => Err(BootError::VersionMismatch {
            guest: version,
            host: PROTOCOL_VERSION,
        }),
        Ok(other) => Err(BootError::UnexpectedMessage {
            what: format!("{other:?}").chars().take(120).collect(),
        }),
        Err(e) => Err(boot_error(inst, e)),
    }
}

/// During boot, "QEMU exited" deserves the richer boot error (elapsed time, QEMU stderr).
fn boot_error(inst: &Instance, e: ChannelError) -> BootError {
    match e {
        ChannelError::QemuExited {
            status,
            console_tail,
        } => BootError::QemuExited {
            status,
            elapsed: inst.spawned_at().elapsed(),
            console_tail,
            stderr_tail: inst.stderr_tail(),
        },
        other => BootError::Channel(other),
    }
}

async fn recv_watched(
    inst: &mut Instance,
    channel: &mut AgentChannel,
) -> Result<GuestMessage, ChannelError> {
    let mut tick = tokio::time::interval(LIVENESS_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            biased;
            r = channel.recv() => match r {
                Ok(Received::Message(m)) => return Ok(m),
                // QEMU closes (or resets) the socket when it exits; prefer that diagnosis.
                Ok(Received::Eof) => {
                    inst.wait_exit(EOF_EXIT_GRACE).await;
                    inst.check_alive()?;
                    return Err(ChannelError::Closed { console_tail: inst.console_tail() });
                }
                Err(ChannelError::Io(e)) => {
                    inst.wait_exit(EOF_EXIT_GRACE).await;
                    inst.check_alive()?;
                    return Err(ChannelError::Io(e));
                }
                Err(e) => return Err(e),
            },
            _ = tick.tick() => inst.check_alive()?,
        }
    }
}

/// Boot-floor benchmark: boots kernel + initramfs with `protocol::PROBE_CMDLINE_FLAG` (the
/// init powers off at once) and returns spawn → exit wall time. Fails if the probe marker
/// is not on the console. `spec.rootfs` is ignored (no devices are attached).
pub async fn boot_to_poweroff(spec: &VmSpec, registry: &Registry) -> Result<Duration, BootError> {
    spec.check_images()?;
    let mut inst = Instance::spawn(registry, &spec.qemu.path, &[], |work| {
        Ok(spec.command(&work.join("console.log"), BootMode::Probe, None, None))
    })
    .await?;
    let result = match inst.wait_exit(spec.boot_timeout).await {
        None => Err(BootError::Timeout {
            timeout: spec.boot_timeout,
            console_tail: inst.console_tail(),
        }),
        Some(status) => {
            let elapsed = inst.spawned_at().elapsed();
            let console = inst.console_tail();
            if inst.console_has_line(protocol::PROBE_MARKER) {
                Ok(elapsed)
            } else if !status.success() {
                Err(BootError::QemuExited {
                    status,
                    elapsed,
                    console_tail: console,
                    stderr_tail: inst.stderr_tail(),
                })
            } else {
                Err(BootError::NoProbeMarker {
                    console_tail: console,
                })
            }
        }
    };
    inst.shutdown().await;
    result
}
