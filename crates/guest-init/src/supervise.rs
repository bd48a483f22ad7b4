//! PID 1's steady state: run the agent, reap everything, return when the agent is gone.

use crate::console;
use crate::error::InitError;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Command;

/// Starts the agent and reaps children until it exits. Orphans of the user's code are
/// reparented to PID 1, so this loop is what keeps zombies from piling up.
pub fn run_agent(agent: &Path) -> Result<(), InitError> {
    let child = Command::new(agent)
        .env_clear()
        .current_dir("/")
        .spawn()
        .map_err(InitError::io(format!("start {}", agent.display())))?;
    let agent_pid = Pid::from_raw(child.id() as i32);
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(status) if status.pid() == Some(agent_pid) => {
                report(status);
                return Ok(());
            }
            Ok(_) | Err(Errno::EINTR) => {}
            // ECHILD cannot happen while the agent lives; anything else is a kernel bug.
            Err(e) => return Err(InitError::io("waitpid")(e)),
        }
    }
}

/// A clean agent exit is silent; anything else leaves a line in the console log.
fn report(status: WaitStatus) {
    match status {
        WaitStatus::Exited(_, 0) => {}
        WaitStatus::Exited(_, code) => {
            console::line(&format!("sbx-init: agent exited with status {code}"))
        }
        WaitStatus::Signaled(_, sig, _) => {
            console::line(&format!("sbx-init: agent killed by {sig}"))
        }
        other => console::line(&format!("sbx-init: agent ended: {other:?}")),
    }
}
