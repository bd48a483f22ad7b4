//! One execution conversation with a booted VM's agent: send the request, collect output
//! until the completion, and turn a silent guest into a host-side timeout. Shared by
//! one-shot runs and session calls; it knows nothing about how the VM was obtained.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::{Completion, ExecRequest, GuestMessage, HostMessage, Language, Stream};
use vmm::Vm;

use crate::error::{Error, PermanentError, TransientError};
use crate::request::{STDERR_CAP, STDOUT_CAP};
use crate::result::OutputChunk;

/// How long past the code's own timeout the host waits for the guest to report before it
/// kills the VM itself. Covers the guest's SIGTERM grace and a slow, loaded TCG guest.
pub(crate) const HOST_GRACE: Duration = Duration::from_secs(8);

/// What the caller wants run; the request sent to the guest is built from it.
pub(crate) struct Cell<'a> {
    pub language: Language,
    pub code: &'a str,
    pub env: &'a [(String, String)],
    pub timeout: Duration,
    pub extension: Option<&'a str>,
    pub persistent: bool,
}

/// How an execution ended, from the host's view.
pub(crate) struct Outcome {
    pub completion: Completion,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The guest never reported: the VM is unresponsive and must be discarded.
    pub host_timed_out: bool,
}

pub(crate) fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Sends the code and collects output until the guest reports completion.
pub(crate) async fn execute(
    vm: &mut Vm,
    cell: &Cell<'_>,
    on_output: &mut (impl FnMut(OutputChunk) + Send),
) -> Result<Outcome, Error> {
    let exec = ExecRequest {
        language: cell.language,
        code: cell.code.to_string(),
        env: cell.env.to_vec(),
        timeout_ms: millis(cell.timeout),
        stdout_cap: STDOUT_CAP,
        stderr_cap: STDERR_CAP,
        unix_time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0),
        extension: cell.extension.map(str::to_string),
        entropy: rand::random::<[u8; 32]>().to_vec(),
        persistent: cell.persistent,
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
    let deadline = tokio::time::Instant::now() + cell.timeout + HOST_GRACE;
    loop {
        let msg = match tokio::time::timeout_at(deadline, vm.recv()).await {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => {
                return Err(Error::OutcomeUnknown {
                    reason: e.to_string(),
                })
            }
            Err(_) => return Ok(host_timeout(cell, stdout, stderr, on_output)),
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
            GuestMessage::Completed(completion) => {
                return Ok(Outcome {
                    completion,
                    stdout,
                    stderr,
                    host_timed_out: false,
                })
            }
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

/// The guest did not report within timeout + grace: the caller kills the VM and reports a
/// timeout, which is what happened from the caller's view.
fn host_timeout(
    cell: &Cell<'_>,
    stdout: Vec<u8>,
    mut stderr: Vec<u8>,
    on_output: &mut (impl FnMut(OutputChunk) + Send),
) -> Outcome {
    let note = format!(
        "\n[sandbox] execution timed out after {} s (the VM was stopped by the host)\n",
        cell.timeout.as_secs_f64()
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
        run_ms: millis(cell.timeout + HOST_GRACE),
        repl_fresh: false,
        repl_lost: cell.persistent,
    };
    Outcome {
        completion,
        stdout,
        stderr,
        host_timed_out: true,
    }
}
