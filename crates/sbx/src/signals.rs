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

/// Which kind of signal arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: Ctrl+C while the terminal is not in the line editor's raw mode.
    Interrupt,
    /// SIGTERM or SIGHUP: someone wants the process gone.
    Terminate,
}

/// Signals one by one, for a command that decides what each means (`sbx session`: a
/// Ctrl+C during a block is a warning, the next one ends the session). Once [`stop`] was
/// called, any further signal runs `force` and exits at once: the way out when cleanup
/// hangs.
///
/// [`stop`]: SignalStream::stop
pub struct SignalStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Signal>,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SignalStream {
    pub fn install(force: impl Fn() + Send + 'static) -> std::io::Result<SignalStream> {
        use std::sync::atomic::Ordering;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stopping.clone();
        tokio::spawn(async move {
            loop {
                let sig = tokio::select! {
                    _ = int.recv() => Signal::Interrupt,
                    _ = term.recv() => Signal::Terminate,
                    _ = hup.recv() => Signal::Terminate,
                };
                if flag.load(Ordering::SeqCst) {
                    force();
                    std::process::exit(exit::INTERRUPTED);
                }
                let _ = tx.send(sig);
            }
        });
        Ok(SignalStream { rx, stopping })
    }

    /// The next signal. Never resolves once the listener is gone.
    pub async fn next(&mut self) -> Signal {
        match self.rx.recv().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }

    /// From now on, a signal forces an immediate exit.
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
