//! `sbx-testnet`: the testnet servers as a process, for black-box CLI tests and checks by hand.
//!
//! ```text
//! sbx-testnet [--record NAME=IP]... [--ignore-stdin] NAME...
//! ```
//!
//! Prints one JSON line ([`testnet::Info`]: DNS address, CA PEM, hosts) on stdout once every
//! server is listening, then serves until stdin reaches end of file or SIGTERM/SIGINT arrives.
//! Closing stdin is the intended stop for tests: it also happens when the test process dies, so
//! no server outlives its test. On the way out, one JSON line on stderr lists what the servers
//! saw (`{"queries":[...],"requests":[...]}`).
//!
//! A shell's background job (`sbx-testnet a.test &`) gets /dev/null as stdin and would stop at
//! once; `--ignore-stdin` makes only signals stop it.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::AsyncReadExt as _;
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: sbx-testnet [--record NAME=IP]... [--ignore-stdin] NAME...";

struct Args {
    spec: testnet::Spec,
    ignore_stdin: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> anyhow::Result<Option<Args>> {
    let mut spec = testnet::Spec::default();
    let mut ignore_stdin = false;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let record = if arg == "--record" {
            Some(args.next().context("--record needs NAME=IP")?)
        } else {
            arg.strip_prefix("--record=").map(str::to_owned)
        };
        if let Some(record) = record {
            let (name, ip) = record
                .split_once('=')
                .with_context(|| format!("--record {record:?}: expected NAME=IP"))?;
            let ip: Ipv4Addr = ip
                .parse()
                .with_context(|| format!("--record {record:?}: {ip:?} is not an IPv4 address"))?;
            spec.records.push((name.to_string(), ip));
        } else if arg == "--ignore-stdin" {
            ignore_stdin = true;
        } else if arg == "-h" || arg == "--help" {
            return Ok(None);
        } else if arg.starts_with('-') {
            bail!("unknown option {arg:?}");
        } else {
            spec.names.push(arg);
        }
    }
    Ok(Some(Args { spec, ignore_stdin }))
}

#[derive(Serialize)]
struct Log {
    queries: Vec<testnet::Query>,
    requests: Vec<testnet::Request>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let net = testnet::Testnet::start(args.spec).await?;

    let line = serde_json::to_string(&net.info())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    drop(stdout);

    let stdin_closed = async {
        if args.ignore_stdin {
            return std::future::pending().await;
        }
        // Anything typed is ignored; only end of file (or a read error) means stop.
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 512];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
    }

    let log = Log {
        queries: net.queries(),
        requests: net.requests(),
    };
    drop(net);
    eprintln!("{}", serde_json::to_string(&log)?);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) if !args.spec.names.is_empty() || !args.spec.records.is_empty() => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Some(_)) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("sbx-testnet: {e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sbx-testnet: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sbx-testnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
