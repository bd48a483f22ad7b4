//! The per-VM network process, seen from the host: starting `sbx-net` beside a VM, reading
//! its ready line (the host ports it bound), asking it for the network report after each
//! call, noticing when it dies, and starting it again with the same ports. The policy
//! itself lives in that process (`net` crate); this module only speaks its stdin/stdout
//! contract ([`net::contract`]).

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use net::contract::{self, Report, Request, Response as Reply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use vmm::Vm;

use crate::error::{Error, NetworkError};
use crate::exec::{execute, Cell, Outcome};
use crate::network::{ExposedPort, NetworkPolicy, Outbound, PortMapping, PortProtocol};
use crate::result::OutputChunk;

/// How long the process may take to bind its ports and reach QEMU's socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a report may take; the process answers from memory.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one execution on a VM whose network is `net` (if it has one): if the network
/// process dies meanwhile the call ends at once with [`NetworkError::Lost`] instead of
/// waiting out its timeout, and once the code is done the call's network report is taken.
pub(crate) async fn execute_with_network(
    vm: &mut Vm,
    net: Option<&mut NetProcess>,
    cell: &Cell<'_>,
    on_output: &mut (impl FnMut(OutputChunk) + Send),
) -> Result<(Outcome, Option<Report>), Error> {
    let Some(net) = net else {
        return Ok((execute(vm, cell, on_output).await?, None));
    };
    let outcome = tokio::select! {
        outcome = execute(vm, cell, on_output) => outcome?,
        why = net.exited() => return Err(NetworkError::Lost(why).into()),
    };
    // The code is done and its result is known: a process that dies just now costs the
    // report, not the result. The next session call notices it is gone and restarts it.
    let report = net.report().await.ok();
    Ok((outcome, report))
}

/// A running network process for one VM. Dropping it kills the process (it is also in the
/// VM's process group, so every VM teardown kills it).
pub(crate) struct NetProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    config: contract::Config,
    ports: Vec<ExposedPort>,
    helper: PathBuf,
}

/// The process's config for this VM, from the caller's policy and ports.
pub(crate) fn config_for(
    vm_socket: &Path,
    policy: &NetworkPolicy,
    ports: &[PortMapping],
    upstream_dns: Option<std::net::SocketAddr>,
) -> contract::Config {
    let (mode, allow_domains) = match &policy.outbound {
        Outbound::None => (contract::Mode::PortsOnly, Vec::new()),
        Outbound::Allowlist { domains } => (
            contract::Mode::Allowlist,
            domains
                .iter()
                .filter_map(|d| crate::network::normalize_domain(d).ok())
                .collect(),
        ),
        Outbound::Full => (contract::Mode::Full, Vec::new()),
    };
    contract::Config {
        qemu_socket: vm_socket.to_path_buf(),
        mode,
        allow_domains,
        // In the canonical form (a bare address becomes a /32), which is what the process
        // parses; validation has already refused anything else.
        allow_ranges: policy
            .allow_ranges
            .iter()
            .filter_map(|r| crate::network::parse_range(r).ok())
            .map(|r| r.to_string())
            .collect(),
        upstream_dns,
        forwards: ports
            .iter()
            .map(|p| contract::Forward {
                internal: p.internal,
                external: p.external,
                protocol: wire_protocol(p.protocol),
            })
            .collect(),
        connect_timeout_ms: None,
    }
}

fn wire_protocol(p: PortProtocol) -> contract::Protocol {
    match p {
        PortProtocol::Tcp => contract::Protocol::Tcp,
        PortProtocol::Udp => contract::Protocol::Udp,
    }
}

fn from_wire(p: contract::Protocol) -> PortProtocol {
    match p {
        contract::Protocol::Tcp => PortProtocol::Tcp,
        contract::Protocol::Udp => PortProtocol::Udp,
    }
}

impl NetProcess {
    /// Starts the process for `vm` and waits until it has bound every forward and reached
    /// QEMU's socket.
    pub(crate) async fn start(
        vm: &Vm,
        helper: &Path,
        config: contract::Config,
    ) -> Result<NetProcess, NetworkError> {
        let mut child = vm
            .spawn_helper("net", helper, &[])
            .map_err(|e| NetworkError::Start(format!("{}: {e}", helper.display())))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(NetworkError::Start(
                "its stdin/stdout were not piped".into(),
            ));
        };
        let mut proc = NetProcess {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            config,
            ports: Vec::new(),
            helper: helper.to_path_buf(),
        };
        let line = serde_json::to_string(&proc.config)
            .map_err(|e| NetworkError::Start(format!("config: {e}")))?;
        let ready = tokio::time::timeout(START_TIMEOUT, proc.exchange_line(&line))
            .await
            .map_err(|_| {
                NetworkError::Start(format!(
                    "not ready after {} s{}",
                    START_TIMEOUT.as_secs(),
                    stderr_tail(vm)
                ))
            })?;
        match ready.map_err(|why| NetworkError::Start(format!("{why}{}", stderr_tail(vm))))? {
            Reply::Ready { forwards } => {
                proc.ports = forwards
                    .iter()
                    .map(|f| ExposedPort::new(f.internal, f.external, from_wire(f.protocol)))
                    .collect();
                Ok(proc)
            }
            Reply::Error { kind, message } => Err(match kind {
                contract::ErrorKind::Bind => NetworkError::Bind(message),
                _ => NetworkError::Start(message),
            }),
            other => Err(NetworkError::Start(format!(
                "unexpected first reply {other:?}"
            ))),
        }
    }

    pub(crate) fn exposed_ports(&self) -> &[ExposedPort] {
        &self.ports
    }

    /// Resolves when the process has exited, with a description for error messages.
    pub(crate) async fn exited(&mut self) -> String {
        describe_exit(self.child.wait().await)
    }

    /// True when the process is gone (exited or killed) without waiting.
    pub(crate) fn is_gone(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The events since the last report.
    pub(crate) async fn report(&mut self) -> Result<Report, NetworkError> {
        let line = serde_json::to_string(&Request::Report(()))
            .map_err(|e| NetworkError::Lost(format!("report request: {e}")))?;
        match tokio::time::timeout(REPORT_TIMEOUT, self.exchange_line(&line)).await {
            Ok(Ok(Reply::Report(report))) => Ok(report),
            Ok(Ok(other)) => Err(NetworkError::Lost(format!(
                "answered a report request with {other:?}"
            ))),
            Ok(Err(why)) => Err(NetworkError::Lost(why)),
            Err(_) => Err(NetworkError::Lost(format!(
                "no report within {} s",
                REPORT_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Replaces a dead process with a new one on the same host ports: QEMU accepts the new
    /// one on the NIC's socket, and the guest's network carries on (its open connections
    /// are lost).
    pub(crate) async fn restart(&mut self, vm: &Vm) -> Result<(), NetworkError> {
        let mut config = self.config.clone();
        for (forward, bound) in config.forwards.iter_mut().zip(&self.ports) {
            forward.external = Some(bound.external);
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let fresh = NetProcess::start(vm, &self.helper, config).await?;
        let ports = std::mem::take(&mut self.ports);
        *self = fresh;
        self.ports = ports;
        Ok(())
    }

    async fn exchange_line(&mut self, line: &str) -> Result<Reply, String> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.stdin
            .write_all(&bytes)
            .await
            .map_err(|e| format!("writing to it: {e}"))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("writing to it: {e}"))?;
        match self.stdout.next_line().await {
            Ok(Some(reply)) => serde_json::from_str(&reply)
                .map_err(|e| format!("unreadable reply {:?}: {e}", truncate(&reply))),
            Ok(None) => Err(match self.child.try_wait() {
                Ok(Some(status)) => describe_exit(Ok(status)),
                _ => "it closed its output".to_string(),
            }),
            Err(e) => Err(format!("reading from it: {e}")),
        }
    }
}

fn describe_exit(status: std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("it exited with status {code}"),
            (None, Some(sig)) => format!("it was killed by signal {sig}"),
            _ => format!("it ended ({s})"),
        },
        Err(e) => format!("waiting for it failed: {e}"),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The end of the process's stderr log, for error messages.
fn stderr_tail(vm: &Vm) -> String {
    let path = vm.work_dir().join("net.stderr");
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("; its log ends: {}", tail.join(" | "))
        }
        _ => String::new(),
    }
}
