//! `sbx run`: read the code, run it in a microVM, stream its output, exit with its status.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::{Language, RunRequest, Scheduler, Stream};

use crate::cli::RunArgs;
use crate::exit;
use crate::netargs;
use crate::progress::BuildProgress;
use crate::signals::Interrupts;
use crate::transfer::{self, Plan};

/// A problem with the command line or the code it names, found before any request exists.
#[derive(Debug)]
pub enum InputError {
    /// The arguments themselves are wrong.
    Usage(String),
    /// The code is unacceptable (reported like any other validation error).
    Invalid(sandbox::ValidationError),
}

fn usage(msg: impl Into<String>) -> InputError {
    InputError::Usage(msg.into())
}

/// Turns the arguments into a request; nothing runs yet.
pub fn build_request(args: &RunArgs) -> Result<RunRequest, InputError> {
    let (code, path) = read_code(args)?;
    let inferred = path.as_deref().and_then(language_for_path);
    let language = args.language.or(inferred).unwrap_or(Language::Python);
    // A file keeps its extension in the guest when it suits the language, so that Bun
    // reads `.jsx`/`.tsx`/`.mjs` files as what they are.
    let extension = path
        .as_deref()
        .and_then(|p| p.extension()?.to_str().map(str::to_ascii_lowercase))
        .filter(|e| language.extensions().contains(&e.as_str()));
    let timeout = parse_timeout(args.timeout, "--timeout")?;
    let env = parse_env(&args.env)?;
    let (network, expose_ports) = netargs::from_args(&args.net)?;
    let mut request = RunRequest::new(language, code)
        .timeout(timeout)
        .memory_mb(args.memory)
        .disk_mb(args.disk)
        .env(env)
        .network(network);
    request.extension = extension;
    request.expose_ports = expose_ports;
    Ok(request)
}

/// A number of seconds from the command line. Durations past the allowed maximum saturate
/// rather than overflow; validation rejects them with the accepted range.
pub fn parse_timeout(seconds: f64, flag: &str) -> Result<Duration, InputError> {
    if seconds.is_nan() || seconds.is_infinite() {
        return Err(usage(format!(
            "{flag} {seconds}: not a finite number of seconds"
        )));
    }
    if seconds < 0.0 {
        return Err(usage(format!("{flag} {seconds}: must not be negative")));
    }
    Ok(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX))
}

/// `-e KEY=VALUE` items as pairs (validated later, with the request).
pub fn parse_env(items: &[String]) -> Result<Vec<(String, String)>, InputError> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| usage(format!("--env {item:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// The code, and the file it came from, if any.
fn read_code(args: &RunArgs) -> Result<(String, Option<std::path::PathBuf>), InputError> {
    match (&args.source, args.code.is_empty()) {
        (Some(_), false) => Err(usage("give the code with -c or as FILE/-/CODE, not both")),
        (None, true) => Err(usage(
            "no code: pass CODE, a FILE, `-` for stdin, or -c CODE",
        )),
        (None, false) => Ok((args.code.join("\n"), None)),
        (Some(src), true) if src == "-" => {
            let code = read_bounded(std::io::stdin().lock(), "stdin")?;
            Ok((code, None))
        }
        (Some(src), true) => {
            let path = Path::new(src);
            let exists = src.len() < 4096 && !src.contains('\n') && path.symlink_metadata().is_ok();
            if exists {
                Ok((read_file(path)?, Some(path.to_path_buf())))
            } else if looks_like_path(src) {
                Err(usage(format!(
                    "{src}: no such file (use -c to pass code that looks like a path)"
                )))
            } else {
                Ok((src.clone(), None))
            }
        }
    }
}

/// True for arguments that are far more likely a mistyped file name than code: no spaces
/// or shell/code punctuation, and a directory separator or a known source extension.
fn looks_like_path(s: &str) -> bool {
    const CODE_CHARS: &str = "()'\";=<>|&$`{}[]!*?#,+";
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || CODE_CHARS.contains(c))
        && (s.contains('/') || language_for_path(Path::new(s)).is_some())
}

fn read_file(path: &Path) -> Result<String, InputError> {
    let name = path.display();
    let meta = std::fs::metadata(path).map_err(|e| usage(format!("{name}: {e}")))?;
    if meta.is_dir() {
        return Err(usage(format!("{name}: is a directory")));
    }
    if !meta.is_file() {
        return Err(usage(format!("{name}: not a regular file")));
    }
    let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if len > sandbox::MAX_CODE_BYTES {
        return Err(InputError::Invalid(
            sandbox::ValidationError::CodeTooLarge {
                len,
                max: sandbox::MAX_CODE_BYTES,
            },
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| usage(format!("{name}: {e}")))?;
    read_bounded(file, &name.to_string())
}

/// Reads at most one byte past the code limit, so an endless or huge input is refused
/// without being held in memory.
fn read_bounded(reader: impl Read, what: &str) -> Result<String, InputError> {
    let mut bytes = Vec::new();
    reader
        .take(sandbox::MAX_CODE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| usage(format!("reading {what}: {e}")))?;
    if bytes.len() > sandbox::MAX_CODE_BYTES {
        return Err(InputError::Invalid(
            sandbox::ValidationError::CodeTooLarge {
                len: bytes.len(),
                max: sandbox::MAX_CODE_BYTES,
            },
        ));
    }
    String::from_utf8(bytes).map_err(|_| usage(format!("{what} is not UTF-8 text")))
}

/// The language a file's extension implies.
pub fn language_for_path(path: &Path) -> Option<Language> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "py" | "pyw" => Some(Language::Python),
        "js" | "mjs" | "cjs" | "jsx" | "ts" | "mts" | "cts" | "tsx" => Some(Language::Javascript),
        "sh" | "bash" => Some(Language::Raw),
        _ => None,
    }
}

/// Where a run's streamed output goes: our stdout and stderr, byte for byte. Write errors
/// (a closed pipe, a full disk) must not abort the run, since its result still counts: the
/// first one is kept for the end, and a reader that went away is signalled so the caller
/// can stop the run as a Unix filter would die of SIGPIPE.
#[derive(Clone)]
pub struct OutputSink {
    silent: bool,
    failure: Arc<Mutex<Option<std::io::Error>>>,
    reader_gone: Arc<tokio::sync::Notify>,
}

impl OutputSink {
    /// `silent` drops the output (it is printed as JSON at the end instead).
    pub fn new(silent: bool) -> OutputSink {
        OutputSink {
            silent,
            failure: Arc::new(Mutex::new(None)),
            reader_gone: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn write(&self, chunk: sandbox::OutputChunk) {
        if self.silent {
            return;
        }
        let written = match chunk.stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&chunk.data).and_then(|_| out.flush())
            }
            Stream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(&chunk.data).and_then(|_| err.flush())
            }
        };
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => self.reader_gone.notify_one(),
            Err(e) => {
                if let Ok(mut slot) = self.failure.lock() {
                    slot.get_or_insert(e);
                }
            }
            Ok(()) => {}
        }
    }

    /// Resolves when whoever reads our output has gone away.
    pub async fn reader_gone(&self) {
        self.reader_gone.notified().await
    }

    /// Reports the first write error, if any.
    pub fn report_failure(&self) {
        if let Some(e) = self.failure.lock().ok().and_then(|mut f| f.take()) {
            eprintln!("sbx: some output could not be written: {e}");
        }
    }
}

/// Notes on stderr about streams cut at their cap.
pub fn report_caps(result: &sandbox::ExecutionResult) {
    for (cut, name, cap) in [
        (result.stdout_truncated, "stdout", sandbox::STDOUT_CAP),
        (result.stderr_truncated, "stderr", sandbox::STDERR_CAP),
    ] {
        if cut {
            eprintln!("sbx: {name} was cut at its {} KiB cap", cap / 1024);
        }
    }
}

pub async fn run(
    args: RunArgs,
    scheduler: Scheduler,
    request: RunRequest,
    plan: Plan,
    interrupts: Interrupts,
) -> i32 {
    let quiet = args.quiet || args.json;
    // Offline, the run itself reports what is missing.
    if !scheduler.config().offline {
        let progress = Arc::new(BuildProgress::new(quiet));
        let languages = [request.language];
        tokio::select! {
            built = scheduler.ensure_images(&languages, progress) => {
                if let Err(e) = built {
                    return report_error(&e, args.json);
                }
            }
            // The build runs on a blocking thread that cannot be cancelled; exiting takes
            // its subprocesses down with us and a later build starts over cleanly.
            _ = interrupts.first() => return interrupted(args.json, quiet),
        }
    }
    if !plan.is_empty() {
        return run_with_files(args, scheduler, request, plan, interrupts).await;
    }

    let sink = OutputSink::new(args.json);
    let mut observer = Observer { sink: sink.clone() };
    let outcome = tokio::select! {
        outcome = scheduler.run_observed(request, &mut observer) => outcome,
        _ = interrupts.first() => {
            // The run future is dropped here, which kills its VM and removes its files.
            return interrupted(args.json, quiet);
        }
        _ = sink.reader_gone() => return exit::BROKEN_PIPE,
    };
    match outcome {
        Ok(result) => {
            if args.json {
                if let Err(e) = print_json(&result) {
                    return json_unwritable(result.exit_code, &e);
                }
            } else if !quiet {
                report_caps(&result);
            }
            sink.report_failure();
            exit::for_result(&result)
        }
        Err(e) => report_error(&e, args.json),
    }
}

/// Streams output and says where forwarded ports are as soon as they listen (on stderr,
/// also with `--json` and `-q`: a caller needs the address while the code runs, and it is
/// the run's output rather than a status message).
struct Observer {
    sink: OutputSink,
}

impl sandbox::RunObserver for Observer {
    fn output(&mut self, chunk: sandbox::OutputChunk) {
        self.sink.write(chunk)
    }

    fn ports_ready(&mut self, ports: &[sandbox::ExposedPort]) {
        announce_ports(ports);
    }
}

pub fn announce_ports(ports: &[sandbox::ExposedPort]) {
    for port in ports {
        eprintln!("sbx: {}", netargs::describe(port));
    }
}

fn json_unwritable(exit_code: i32, e: &std::io::Error) -> i32 {
    eprintln!(
        "sbx: the code ran (exit code {exit_code}), but its JSON result could not be written: {e}"
    );
    exit::INFRA
}

/// How a run with files ended, before it is reported.
// One value per run, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum FilesOutcome {
    /// An upload failed; the code did not run.
    UploadFailed,
    Ran(Result<sandbox::ExecutionResult, sandbox::Error>),
}

/// `sbx run` with `--upload`/`--download`: the same run, in a session so the files can go
/// in before the code and come out after it. Downloads happen whatever the code did —
/// a failure or a timeout is when its logs matter most.
async fn run_with_files(
    args: RunArgs,
    scheduler: Scheduler,
    request: RunRequest,
    plan: Plan,
    interrupts: Interrupts,
) -> i32 {
    let quiet = args.quiet || args.json;
    let sink = OutputSink::new(args.json);
    let mut uploads = Vec::new();
    let mut downloads = Vec::new();
    let work = async {
        let mut options = sandbox::SessionOptions::new(request.language)
            .memory_mb(request.memory_mb)
            .disk_mb(request.disk_mb)
            .network(request.network.clone());
        options.expose_ports = request.expose_ports.clone();
        let session = scheduler.session(options).await?;
        announce_ports(session.exposed_ports());
        for up in &plan.uploads {
            let record = transfer::upload(&session, up).await;
            let failed = record.error.is_some();
            uploads.push(record);
            if failed {
                session.close().await;
                return Ok(FilesOutcome::UploadFailed);
            }
        }
        let on_output = {
            let sink = sink.clone();
            move |chunk| sink.write(chunk)
        };
        let ran = session
            .run_program(
                &request.code,
                request.timeout,
                request.env.clone(),
                request.extension.as_deref(),
                on_output,
            )
            .await;
        for down in &plan.downloads {
            downloads.push(transfer::download(&session, down).await);
        }
        session.close().await;
        Ok::<_, sandbox::Error>(FilesOutcome::Ran(ran))
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        // Dropping the work kills the session's VM; a download in progress removes its
        // temporary file.
        _ = interrupts.first() => return interrupted(args.json, quiet),
        _ = sink.reader_gone() => return exit::BROKEN_PIPE,
    };
    if !args.json {
        for (what, records) in [("upload", &uploads), ("download", &downloads)] {
            for r in records {
                if let Some(e) = &r.error {
                    eprintln!("sbx: {what} {}: {e}", r.guest);
                }
            }
        }
    }
    let transfers_failed = uploads.iter().chain(&downloads).any(|r| r.error.is_some());
    let files = serde_json::json!({ "uploads": uploads, "downloads": downloads });
    match outcome {
        Err(e) => report_error_with(&e, args.json, files),
        Ok(FilesOutcome::UploadFailed) => {
            if args.json {
                let _ = print_json(&merge(
                    serde_json::json!({ "error": {
                        "kind": "file",
                        "message": "an upload failed; the code did not run",
                        "retry_safe": false,
                        "code_may_have_run": false,
                    }}),
                    files,
                ));
            }
            exit::TRANSFER
        }
        Ok(FilesOutcome::Ran(Err(e))) => report_error_with(&e, args.json, files),
        Ok(FilesOutcome::Ran(Ok(result))) => {
            if args.json {
                let value = match serde_json::to_value(&result) {
                    Ok(v) => v,
                    Err(e) => return json_unwritable(result.exit_code, &std::io::Error::other(e)),
                };
                if let Err(e) = print_json(&merge(value, files)) {
                    return json_unwritable(result.exit_code, &e);
                }
            } else if !quiet {
                report_caps(&result);
            }
            sink.report_failure();
            match exit::for_result(&result) {
                0 if transfers_failed => exit::TRANSFER,
                status => status,
            }
        }
    }
}

/// `base` with the fields of `extra` added (both objects).
fn merge(mut base: serde_json::Value, extra: serde_json::Value) -> serde_json::Value {
    if let (Some(b), serde_json::Value::Object(e)) = (base.as_object_mut(), extra) {
        b.extend(e);
    }
    base
}

fn print_json<T: serde::Serialize>(value: &T) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Reports a cancelled run: a JSON error object with `--json`, a line otherwise.
pub fn interrupted(json: bool, quiet: bool) -> i32 {
    if json {
        report_error(&sandbox::Error::Cancelled, true)
    } else {
        if !quiet {
            eprintln!("sbx: interrupted");
        }
        exit::INTERRUPTED
    }
}

/// Reports a command-line problem found before any request exists: a line on stderr, and
/// with `--json` also an error object on stdout (kind `usage`), so a caller parsing JSON
/// always gets JSON.
pub fn report_usage(message: &str, json: bool) -> i32 {
    eprintln!("sbx: {message}");
    if json {
        let _ = print_json(&serde_json::json!({
            "error": {
                "kind": "usage",
                "message": message,
                "retry_safe": false,
                "code_may_have_run": false,
            }
        }));
    }
    exit::USAGE
}

pub fn report_error(err: &sandbox::Error, json: bool) -> i32 {
    report_error_with(err, json, serde_json::json!({}))
}

/// [`report_error`], with `extra` fields beside `error` in the JSON object.
fn report_error_with(err: &sandbox::Error, json: bool, extra: serde_json::Value) -> i32 {
    if json {
        let _ = print_json(&merge(
            serde_json::json!({
                "error": {
                    "kind": err.kind(),
                    "message": err.to_string(),
                    "retry_safe": err.is_retry_safe(),
                    "code_may_have_run": err.code_may_have_run(),
                }
            }),
            extra,
        ));
    } else {
        eprintln!("sbx: {err}");
    }
    exit::for_error(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_map_to_languages() {
        assert_eq!(
            language_for_path(Path::new("a/script.py")),
            Some(Language::Python)
        );
        assert_eq!(
            language_for_path(Path::new("x.TS")),
            Some(Language::Javascript)
        );
        assert_eq!(language_for_path(Path::new("run.sh")), Some(Language::Raw));
        assert_eq!(language_for_path(Path::new("README")), None);
    }
}
