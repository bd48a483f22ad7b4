//! Two-stage interrupt handling: the first Ctrl+C (or SIGTERM/SIGHUP) cancels the work in
//! progress so it can clean up; a second one kills every VM this process recorded, at
//! once, and exits 130.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::exit;

#[derive(Clone)]
pub struct Interrupts {
    rx: watch::Receiver<u32>,
}

impl Interrupts {
    /// Starts listening. `kill_all` runs on the second signal, just before exiting.
    pub fn install(kill_all: impl Fn() + Send + 'static) -> std::io::Result<Interrupts> {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, rx) = watch::channel(0u32);
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
                count += 1;
                if count >= 2 {
                    kill_all();
                    std::process::exit(exit::INTERRUPTED);
                }
                let _ = tx.send(count);
            }
        });
        Ok(Interrupts { rx })
    }

    /// Resolves when the first interrupt arrives.
    pub async fn first(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|n| *n >= 1).await;
    }
}
