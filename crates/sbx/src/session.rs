//! `sbx session`: one VM whose REPL keeps its state from block to block.
//!
//! On a terminal it is an interactive prompt (line editing, history, multi-line blocks as
//! [`crate::blocks`] defines them). Otherwise it reads the whole of stdin, splits it into
//! the same blocks, runs them in order and exits with the last one's status.
//!
//! Signals: Ctrl+C at the prompt only clears the line (the line editor sees it as a key).
//! While a block runs, the first Ctrl+C says the block goes on until its timeout, since
//! stopping it means stopping the VM and losing the session; a second one does exactly
//! that and exits 130. SIGTERM or SIGHUP ends the session at once. Reading from a pipe,
//! there is nobody to warn, so the first signal ends it as it would end `sbx run`.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Behavior, Config, Editor};
use sandbox::{ExecutionResult, Language, RunRequest, Scheduler, Session, SessionOptions};

use crate::blocks::{self, Block, Source};
use crate::cli::SessionArgs;
use crate::exit;
use crate::progress::BuildProgress;
use crate::run::{self, InputError, OutputSink};
use crate::signals::{Signal, SignalStream};

/// Largest script read from a pipe. Each block is limited to the code limit anyway; this
/// only keeps an endless pipe from filling memory.
const MAX_SCRIPT_BYTES: u64 = 64 * 1024 * 1024;

/// The session's settings, checked before anything starts.
pub struct Prepared {
    options: SessionOptions,
    timeout: Duration,
    env: Vec<(String, String)>,
}

/// Checks the arguments as the library would, so that bad input is refused before a VM
/// boots (or even before the scheduler starts).
pub fn prepare(args: &SessionArgs) -> Result<Prepared, InputError> {
    let timeout = run::parse_timeout(args.timeout, "--timeout")?;
    let idle = run::parse_timeout(args.idle_timeout, "--idle-timeout")?;
    let env = run::parse_env(&args.env)?;
    let (network, expose_ports) = crate::netargs::from_args(&args.net)?;
    sandbox::validate_network(&network, &expose_ports).map_err(InputError::Invalid)?;
    // The per-call checks (timeout, memory, environment) are those of a run request.
    let probe = RunRequest::new(args.language, "0")
        .timeout(timeout)
        .memory_mb(args.memory)
        .disk_mb(args.disk)
        .env(env.clone());
    sandbox::validate(&probe).map_err(InputError::Invalid)?;
    if !(sandbox::MIN_IDLE_TIMEOUT..=sandbox::MAX_IDLE_TIMEOUT).contains(&idle) {
        return Err(InputError::Invalid(sandbox::ValidationError::IdleTimeout {
            given_ms: idle.as_millis(),
            min_s: sandbox::MIN_IDLE_TIMEOUT.as_secs(),
            max_s: sandbox::MAX_IDLE_TIMEOUT.as_secs(),
        }));
    }
    let mut prepared = Prepared {
        options: SessionOptions::new(args.language)
            .memory_mb(args.memory)
            .disk_mb(args.disk)
            .idle_timeout(idle)
            .network(network),
        timeout,
        env,
    };
    prepared.options.expose_ports = expose_ports;
    Ok(prepared)
}

/// Whether this invocation is interactive: stdin is a terminal.
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

pub async fn session(
    args: SessionArgs,
    scheduler: Scheduler,
    prepared: Prepared,
    mut signals: SignalStream,
) -> i32 {
    let interactive = interactive();
    // A script is read and checked whole before a VM is spent on it.
    let script = if interactive {
        None
    } else {
        match read_script(args.language, prepared.timeout, &prepared.env) {
            Ok(blocks) if blocks.is_empty() => return 0,
            Ok(blocks) => Some(blocks),
            Err(InputError::Usage(msg)) => {
                eprintln!("sbx: {msg}");
                return exit::USAGE;
            }
            Err(InputError::Invalid(e)) => {
                return run::report_error(&sandbox::Error::Invalid(e), false)
            }
        }
    };
    let quiet = args.quiet;
    if interactive {
        terminal::save();
    }

    if !scheduler.config().offline {
        let progress = Arc::new(BuildProgress::new(quiet));
        let languages = [args.language];
        tokio::select! {
            built = scheduler.ensure_images(&languages, progress) => {
                if let Err(e) = built {
                    return run::report_error(&e, false);
                }
            }
            _ = signals.next() => return interrupted(quiet),
        }
    }
    let session = tokio::select! {
        opened = scheduler.session(prepared.options.clone()) => match opened {
            Ok(s) => s,
            Err(e) => return run::report_error(&e, false),
        },
        // Dropping the boot kills the VM it was starting.
        _ = signals.next() => return interrupted(quiet),
    };
    run::announce_ports(session.exposed_ports());
    let calls = Calls {
        session,
        timeout: prepared.timeout,
        env: prepared.env,
        quiet,
    };
    let code = match script {
        Some(blocks) => run_script(&calls, blocks, &mut signals).await,
        None => {
            if !quiet {
                eprintln!(
                    "sbx session: {}, {}, booted in {:.1} s; Ctrl+D to exit",
                    args.language,
                    accelerator_name(calls.session.accelerator()),
                    calls.session.boot_time().as_secs_f64()
                );
            }
            prompt_loop(&calls, args.language, &mut signals).await
        }
    };
    // From here on a signal means "stop waiting for cleanup".
    signals.stop();
    calls.session.close().await;
    code
}

fn interrupted(quiet: bool) -> i32 {
    if !quiet {
        eprintln!("sbx: interrupted");
    }
    terminal::restore();
    exit::INTERRUPTED
}

fn accelerator_name(accel: sandbox::Accelerator) -> String {
    serde_json::to_value(accel)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{accel:?}").to_lowercase())
}

/// Reads stdin whole and splits it into blocks, each checked as a request would be.
fn read_script(
    language: Language,
    timeout: Duration,
    env: &[(String, String)],
) -> Result<Vec<String>, InputError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(MAX_SCRIPT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InputError::Usage(format!("reading stdin: {e}")))?;
    if bytes.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(InputError::Usage(format!(
            "stdin is over {} MiB",
            MAX_SCRIPT_BYTES / 1024 / 1024
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| InputError::Usage("stdin is not UTF-8 text".into()))?;
    let blocks = blocks::split(language, &text);
    for block in &blocks {
        let request = RunRequest::new(language, block.as_str())
            .timeout(timeout)
            .env(env.to_vec());
        sandbox::validate(&request).map_err(InputError::Invalid)?;
    }
    Ok(blocks)
}

/// What every block is run with.
struct Calls {
    session: Session,
    timeout: Duration,
    env: Vec<(String, String)>,
    quiet: bool,
}

/// How one block ended.
// One value per run, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Ran {
    Done(Result<ExecutionResult, sandbox::Error>),
    /// The user or a signal ended the session while the block ran (its VM is gone).
    Ended,
    /// Our output's reader went away.
    ReaderGone,
}

impl Calls {
    /// Runs one block, streaming its output. `patient` is the interactive rule for
    /// signals (warn first); otherwise the first signal ends the session.
    async fn run(&self, code: &str, signals: &mut SignalStream, patient: bool) -> Ran {
        let sink = OutputSink::new(false);
        let on_output = {
            let sink = sink.clone();
            move |chunk| sink.write(chunk)
        };
        let call = self
            .session
            .exec_streaming(code, self.timeout, self.env.clone(), on_output);
        tokio::pin!(call);
        let mut warned = false;
        loop {
            tokio::select! {
                done = &mut call => {
                    sink.report_failure();
                    return Ran::Done(done);
                }
                sig = signals.next() => {
                    if patient && sig == Signal::Interrupt && !warned {
                        warned = true;
                        eprintln!(
                            "\nsbx: the block runs until it ends or its {} s timeout; press Ctrl+C again to end the session",
                            self.timeout.as_secs_f64()
                        );
                        continue;
                    }
                    // Returning drops the call, which stops the VM: the session is over.
                    return Ran::Ended;
                }
                _ = sink.reader_gone() => return Ran::ReaderGone,
            }
        }
    }

    /// Notes on stderr after a block: its status, whether the REPL's state was lost,
    /// truncated output.
    fn report(&self, result: &ExecutionResult) {
        if self.quiet {
            return;
        }
        run::report_caps(result);
        let lost = result.repl.is_some_and(|r| r.lost);
        let status = if result.timed_out {
            Some(format!("timed out after {} s", self.timeout.as_secs_f64()))
        } else if result.exit_code != 0 {
            Some(format!("exit {}", result.exit_code))
        } else {
            None
        };
        let note = match (status, lost) {
            (Some(s), true) => {
                format!("{s}; the REPL state was lost, the next block starts afresh")
            }
            (Some(s), false) => s,
            (None, true) => "the REPL state was lost, the next block starts afresh".into(),
            (None, false) => return,
        };
        eprintln!("{}", dim(&format!("[{note}]")));
    }
}

/// Dimmed text for notes on a terminal; plain elsewhere.
fn dim(text: &str) -> String {
    if std::io::stderr().is_terminal() {
        format!("\x1b[2m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Runs a piped script's blocks in order; the last one's status is the exit status. A
/// block that fails goes on to the next, as typing it would; a session that is gone stops.
async fn run_script(calls: &Calls, blocks: Vec<String>, signals: &mut SignalStream) -> i32 {
    let mut status = 0;
    for block in blocks {
        match calls.run(&block, signals, false).await {
            Ran::Done(Ok(result)) => {
                calls.report(&result);
                status = exit::for_result(&result);
            }
            Ran::Done(Err(e @ sandbox::Error::Invalid(_))) => status = run::report_error(&e, false),
            Ran::Done(Err(e)) => return run::report_error(&e, false),
            Ran::Ended => return interrupted(calls.quiet),
            Ran::ReaderGone => return exit::BROKEN_PIPE,
        }
    }
    status
}

/// The interactive prompt: read a block, run it, repeat until Ctrl+D.
async fn prompt_loop(calls: &Calls, language: Language, signals: &mut SignalStream) -> i32 {
    let mut reader = match LineReader::spawn(language) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sbx: cannot start the line editor: {e}");
            return exit::INFRA;
        }
    };
    loop {
        reader.request();
        let input = loop {
            tokio::select! {
                input = reader.next() => break input,
                sig = signals.next() => {
                    // Ctrl+C at the prompt is a key, not a signal; one that arrives anyway
                    // (`kill -INT`) is ignored like the key would be.
                    if sig == Signal::Terminate {
                        eprintln!();
                        return interrupted(calls.quiet);
                    }
                }
            }
        };
        let code = match input {
            Input::Block(code) => code,
            Input::Eof => {
                eprintln!();
                return 0;
            }
            Input::Failed(e) => {
                eprintln!("sbx: reading the terminal: {e}");
                return exit::INFRA;
            }
        };
        match calls.run(&code, signals, true).await {
            Ran::Done(Ok(result)) => calls.report(&result),
            Ran::Done(Err(e @ (sandbox::Error::Invalid(_) | sandbox::Error::File(_)))) => {
                eprintln!("sbx: {e}");
            }
            Ran::Done(Err(e)) => {
                // The session is gone (its VM failed, or it sat idle past its timeout).
                return run::report_error(&e, false);
            }
            Ran::Ended => return interrupted(calls.quiet),
            Ran::ReaderGone => return exit::BROKEN_PIPE,
        }
    }
}

/// What the line editor produced.
enum Input {
    Block(String),
    /// Ctrl+D at an empty prompt.
    Eof,
    Failed(String),
}

/// The line editor, on a thread of its own: reading the terminal blocks, and the async
/// side must stay free to watch for signals meanwhile. It reads one block per request, so
/// the terminal is left alone (not in raw mode) while a block runs and prints.
struct LineReader {
    requests: std::sync::mpsc::Sender<()>,
    inputs: tokio::sync::mpsc::UnboundedReceiver<Input>,
}

impl LineReader {
    fn spawn(language: Language) -> std::io::Result<LineReader> {
        let (req_tx, req_rx) = std::sync::mpsc::channel::<()>();
        let (in_tx, in_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("line-editor".into())
            .spawn(move || {
                let mut editor = match new_editor() {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = in_tx.send(Input::Failed(e.to_string()));
                        return;
                    }
                };
                let history = history_file(language);
                if let Some(path) = &history {
                    // A missing or unreadable history file only means starting afresh.
                    let _ = editor.load_history(path);
                }
                while req_rx.recv().is_ok() {
                    let input = read_block(&mut editor, language);
                    if let (Some(path), Input::Block(_)) = (&history, &input) {
                        let _ = editor.append_history(path);
                    }
                    let last = !matches!(input, Input::Block(_));
                    if in_tx.send(input).is_err() || last {
                        return;
                    }
                }
            })?;
        Ok(LineReader {
            requests: req_tx,
            inputs: in_rx,
        })
    }

    fn request(&self) {
        let _ = self.requests.send(());
    }

    async fn next(&mut self) -> Input {
        self.inputs
            .recv()
            .await
            .unwrap_or_else(|| Input::Failed("the line editor stopped".into()))
    }
}

fn new_editor() -> rustyline::Result<Editor<(), DefaultHistory>> {
    let config = Config::builder()
        .max_history_size(1000)?
        .history_ignore_dups(true)?
        .history_ignore_space(true)
        .auto_add_history(false)
        // Not `check_cursor_position`: it reads the terminal's answer from stdin and
        // swallows whatever the user typed ahead while a block ran. The prompt loop ends
        // unterminated output with a newline itself.
        // Prompts go to the terminal even when stdout is redirected.
        .behavior(Behavior::PreferTerm)
        .build();
    Editor::with_config(config)
}

/// Reads lines until they form a complete block. Ctrl+C discards the block; Ctrl+D at an
/// empty prompt ends the session, and on a continuation line sends what was typed.
fn read_block(editor: &mut Editor<(), DefaultHistory>, language: Language) -> Input {
    let (primary, continuation) = blocks::prompts(language);
    let mut block = Block::new(language, Source::Prompt);
    loop {
        let prompt = if block.is_empty() {
            primary
        } else {
            continuation
        };
        match editor.readline(prompt) {
            Ok(line) => {
                if block.is_empty() && line.trim().is_empty() {
                    continue;
                }
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                // A paste may bring several lines at once.
                for part in line.split('\n') {
                    block.push(part.strip_suffix('\r').unwrap_or(part));
                }
                if block.is_complete() {
                    return Input::Block(block.text());
                }
            }
            Err(ReadlineError::Interrupted) => block = Block::new(language, Source::Prompt),
            Err(ReadlineError::Eof) if block.is_empty() => return Input::Eof,
            Err(ReadlineError::Eof) => return Input::Block(block.text()),
            Err(e) => return Input::Failed(e.to_string()),
        }
    }
}

/// `$XDG_STATE_HOME/exec-sandbox/history-<language>` (default `~/.local/state`), per
/// language since Python lines are no use at a bash prompt; `None` when there is no such
/// place.
fn history_file(language: Language) -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    let dir = state.join("exec-sandbox");
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    Some(dir.join(format!("history-{language}")))
}

/// The terminal's settings from before the line editor touched them, restored when we exit
/// while it may be in raw mode (a signal at the prompt).
pub mod terminal {
    use super::*;

    static SAVED: OnceLock<libc::termios> = OnceLock::new();

    pub fn save() {
        // SAFETY: tcgetattr writes a termios struct for a valid descriptor; zeroed is a
        // valid initial value for this plain C struct.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0 {
            let _ = SAVED.set(t);
        }
    }

    pub fn restore() {
        if let Some(t) = SAVED.get() {
            // SAFETY: restores settings read from the same descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
            let _ = std::io::stderr().flush();
        }
    }
}
