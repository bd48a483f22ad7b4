//! Command-line grammar (clap). Parsing only: no behaviour lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sbx",
    version,
    about = "Run untrusted code in throwaway QEMU microVMs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run code in a fresh microVM; exits with the code's exit status.
    Run(RunArgs),
    /// Show what this machine offers: QEMU, accelerator verdict and why, cgroups, images.
    Doctor(DoctorArgs),
    /// Build, list or prune the cached guest images.
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// An interactive session: one VM whose REPL keeps its state from block to block.
    /// With stdin not a terminal, runs the blocks read from stdin and exits with the last
    /// one's status.
    Session(SessionArgs),
    /// Measure cold runs against the boot floor and native execution, session calls, and
    /// file transfers against host loopback TCP.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Language: python, javascript (also TypeScript) or raw (bash). Default: inferred from
    /// the file's extension, else python.
    #[arg(short, long, value_parser = parse_language)]
    pub language: Option<sandbox::Language>,
    /// Code to run; repeat to add lines.
    #[arg(
        short = 'c',
        long = "code",
        value_name = "CODE",
        allow_hyphen_values = true
    )]
    pub code: Vec<String>,
    /// A file to run, `-` for standard input, or the code itself.
    /// (Code that starts with `-` goes after `--` or in `-c`, so that a mistyped flag is
    /// an error, not code.)
    #[arg(value_name = "FILE | - | CODE")]
    pub source: Option<String>,
    /// Timeout in seconds (1–300).
    #[arg(short, long, value_name = "SECONDS", default_value_t = 30.0)]
    pub timeout: f64,
    /// Guest memory in MiB (128–16384).
    #[arg(short, long, value_name = "MB", default_value_t = sandbox::DEFAULT_MEMORY_MB)]
    pub memory: u32,
    /// Size of the disk holding /home/user, in MiB (64–1048576). Sparse: it uses host disk
    /// only for what the code writes.
    #[arg(long, value_name = "MB", default_value_t = sandbox::DEFAULT_DISK_MB)]
    pub disk: u32,
    /// Environment variable for the code; repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Print the whole result as JSON on stdout instead of streaming output.
    #[arg(long)]
    pub json: bool,
    /// No progress or status messages from sbx itself.
    #[arg(short, long)]
    pub quiet: bool,
    /// Copy a local file into the guest before the code runs (GUEST is relative to
    /// /home/user; default: the file's name; a GUEST ending in `/` is a directory). Split at
    /// the last `:`. Repeatable.
    #[arg(long, value_name = "LOCAL[:GUEST]")]
    pub upload: Vec<String>,
    /// Copy a guest file (relative to /home/user) out after the code ran, even if it failed
    /// or timed out (default LOCAL: the file's name in the current directory; an existing
    /// directory or one ending in `/` receives the file). Split at the first `:`. Repeatable.
    #[arg(long, value_name = "GUEST[:LOCAL]")]
    pub download: Vec<String>,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Network flags, shared by `run` and `session`. Without any, the VM has no network
/// interface at all.
#[derive(Debug, Clone, Default, Args)]
pub struct NetArgs {
    /// Make a guest port reachable on the host's 127.0.0.1 (EXTERNAL default: a free port,
    /// printed when it is listening). Repeatable, at most 10. Alone, the guest still cannot
    /// resolve names or connect anywhere.
    #[arg(long, value_name = "INTERNAL[:EXTERNAL][/tcp|udp]")]
    pub expose: Vec<String>,
    /// Let the guest connect anywhere public (not the host's own addresses or private
    /// ranges, unless --allow-range opens them).
    #[arg(long, conflicts_with = "allow_domain")]
    pub network: bool,
    /// Let the guest resolve this domain and its subdomains and reach them over HTTPS (TLS
    /// on port 443, checked by name) — and nothing else. Repeatable.
    #[arg(long, value_name = "DOMAIN")]
    pub allow_domain: Vec<String>,
    /// A destination range (IPv4 CIDR) the guest may reach although it is private,
    /// link-local or the host's loopback, which are refused otherwise. Repeatable.
    #[arg(long, value_name = "CIDR")]
    pub allow_range: Vec<String>,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Language: python, javascript (also TypeScript) or raw (bash).
    #[arg(short, long, value_parser = parse_language, default_value = "python")]
    pub language: sandbox::Language,
    /// Timeout for each block, in seconds (1–300).
    #[arg(short, long, value_name = "SECONDS", default_value_t = 30.0)]
    pub timeout: f64,
    /// Guest memory in MiB (128–16384).
    #[arg(short, long, value_name = "MB", default_value_t = sandbox::DEFAULT_MEMORY_MB)]
    pub memory: u32,
    /// Size of the disk holding /home/user, in MiB (64–1048576). Sparse: it uses host disk
    /// only for what the code writes.
    #[arg(long, value_name = "MB", default_value_t = sandbox::DEFAULT_DISK_MB)]
    pub disk: u32,
    /// Stop the VM after this many seconds without a block.
    #[arg(long, value_name = "SECONDS", default_value_t = sandbox::DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    pub idle_timeout: f64,
    /// Environment variable for every block; repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// No banner or status notes from sbx itself.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Build the images for these languages (default: all) ahead of time.
    Build {
        #[arg(short, long, value_parser = parse_language)]
        language: Vec<sandbox::Language>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List cached images and their sizes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove cached images the current version does not use.
    Prune,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Rounds: cold runs per language and of each baseline; 50 session calls (each beside a
    /// loopback round trip) per round; transfers up to 3.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub runs: usize,
    /// Languages to measure (default: all). Session calls and transfers run in Python, so
    /// they are measured only when python is one of them.
    #[arg(short, long, value_parser = parse_language)]
    pub language: Vec<sandbox::Language>,
    /// Write the raw samples as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Size of the file for the upload/download throughput measurement, in MiB (0 skips it).
    #[arg(long, value_name = "MB", default_value_t = 64)]
    pub transfer_mb: u64,
    /// Bytes pushed each way through a port forward per round, in MiB (0 skips the network
    /// measurements: connection latency, forward throughput, DNS answers).
    #[arg(long, value_name = "MB", default_value_t = 16)]
    pub network_mb: u64,
}

fn parse_language(s: &str) -> Result<sandbox::Language, String> {
    sandbox::Language::from_name(s)
        .ok_or_else(|| format!("unknown language {s:?}: expected python, javascript or raw"))
}
