//! `sbx`: the exec-sandbox command line.
//!
//! This binary owns argument parsing, terminal output, exit statuses and signal handling.
//! Everything it runs goes through the `sandbox` library; it must not start QEMU or build
//! images by itself.

mod bench;
mod blocks;
mod cli;
mod doctor;
mod exit;
mod images_cmd;
mod netargs;
mod progress;
mod run;
mod session;
mod signals;
mod transfer;

use clap::Parser;

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Session(_)) {
        // Reports piped into `head` and the like should end quietly when the reader goes
        // away, as Unix tools do. `run` and `session` keep SIGPIPE ignored: they must
        // outlive a closed stdout long enough to stop their VM, and handle write errors.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Two workers are plenty: the work is waiting on QEMU. The runtime's threads live as long
    // as the process, which keeps PR_SET_PDEATHSIG (tied to the spawning thread) meaningful.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sbx: cannot start the async runtime: {e}");
            std::process::exit(exit::INFRA);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Do not wait for stray blocking tasks (an abandoned image build holds its own lock).
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> i32 {
    match cli.command {
        Command::Run(args) => {
            // Reject bad input before touching QEMU, images or the registry.
            let request = match run::build_request(&args) {
                Ok(r) => r,
                Err(run::InputError::Usage(msg)) => return run::report_usage(&msg, args.json),
                Err(run::InputError::Invalid(e)) => {
                    return run::report_error(&sandbox::Error::Invalid(e), args.json)
                }
            };
            if let Err(e) = sandbox::validate(&request) {
                return run::report_error(&sandbox::Error::Invalid(e), args.json);
            }
            let plan = match transfer::plan(&args.upload, &args.download) {
                Ok(p) => p,
                Err(run::InputError::Usage(msg)) => return run::report_usage(&msg, args.json),
                Err(run::InputError::Invalid(e)) => {
                    return run::report_error(&sandbox::Error::Invalid(e), args.json)
                }
            };
            let scheduler = match scheduler().await {
                Ok(s) => s,
                Err(e) => return run::report_error(&e, args.json),
            };
            let interrupts = match install_interrupts(&scheduler) {
                Ok(i) => i,
                Err(code) => return code,
            };
            let code = run::run(args, scheduler.clone(), request, plan, interrupts).await;
            scheduler.shutdown().await;
            code
        }
        Command::Session(args) => {
            let prepared = match session::prepare(&args) {
                Ok(p) => p,
                Err(run::InputError::Usage(msg)) => {
                    eprintln!("sbx: {msg}");
                    return exit::USAGE;
                }
                Err(run::InputError::Invalid(e)) => {
                    return run::report_error(&sandbox::Error::Invalid(e), false)
                }
            };
            let scheduler = match scheduler().await {
                Ok(s) => s,
                Err(e) => return run::report_error(&e, false),
            };
            let registry = scheduler.registry().clone();
            let signals = match signals::SignalStream::install(move || {
                registry.kill_all();
                session::terminal::restore();
            }) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("sbx: cannot install signal handlers: {e}");
                    return exit::INFRA;
                }
            };
            let code = session::session(args, scheduler.clone(), prepared, signals).await;
            scheduler.shutdown().await;
            code
        }
        Command::Doctor(args) => doctor::doctor(args).await,
        Command::Images { command } => images_cmd::images(command).await,
        Command::Bench(args) => {
            let scheduler = match scheduler().await {
                Ok(s) => s,
                Err(e) => return run::report_error(&e, false),
            };
            let interrupts = match install_interrupts(&scheduler) {
                Ok(i) => i,
                Err(code) => return code,
            };
            tokio::select! {
                code = bench::bench(args, scheduler.clone()) => code,
                _ = interrupts.first() => exit::INTERRUPTED,
            }
        }
    }
}

/// The configuration, or the exit status after reporting why there is none.
fn config() -> Result<sandbox::Config, i32> {
    sandbox::Config::from_env().map_err(|e| {
        eprintln!("sbx: {e}");
        exit::INFRA
    })
}

async fn scheduler() -> Result<sandbox::Scheduler, sandbox::Error> {
    let config = sandbox::Config::from_env()?;
    sandbox::Scheduler::new(config).await
}

fn install_interrupts(scheduler: &sandbox::Scheduler) -> Result<signals::Interrupts, i32> {
    let registry = scheduler.registry().clone();
    signals::Interrupts::install(move || {
        registry.kill_all();
        transfer::remove_partial_files();
    })
    .map_err(|e| {
        eprintln!("sbx: cannot install signal handlers: {e}");
        exit::INFRA
    })
}
