//! `sbx run`: read the code, run it in a microVM, stream its output, exit with its status.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sandbox::{Language, RunRequest, Scheduler, Stream};

use crate::cli::RunArgs;
use crate::exit;
use crate::progress::BuildProgress;
use crate::signals::Interrupts;

/// A command-line problem found before any request exists.
#[derive(Debug)]
pub struct UsageError(pub String);

/// Turns the arguments into a request; nothing runs yet.
pub fn build_request(args: &RunArgs) -> Result<RunRequest, UsageError> {
    let (code, inferred) = read_code(args)?;
    let language = args.language.or(inferred).unwrap_or(Language::Python);
    if !args.timeout.is_finite() || args.timeout < 0.0 {
        return Err(UsageError(format!(
            "--timeout {}: not a number of seconds",
            args.timeout
        )));
    }
    let mut env = Vec::with_capacity(args.env.len());
    for item in &args.env {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| UsageError(format!("--env {item:?}: expected KEY=VALUE")))?;
        env.push((k.to_string(), v.to_string()));
    }
    // Durations past the allowed maximum saturate rather than overflow; validation rejects them.
    let timeout = Duration::try_from_secs_f64(args.timeout).unwrap_or(Duration::MAX);
    Ok(RunRequest::new(language, code)
        .timeout(timeout)
        .memory_mb(args.memory)
        .env(env))
}

fn read_code(args: &RunArgs) -> Result<(String, Option<Language>), UsageError> {
    match (&args.source, args.code.is_empty()) {
        (Some(_), false) => Err(UsageError(
            "give the code with -c or as FILE/-/CODE, not both".into(),
        )),
        (None, true) => Err(UsageError(
            "no code: pass CODE, a FILE, `-` for stdin, or -c CODE".into(),
        )),
        (None, false) => Ok((args.code.join("\n"), None)),
        (Some(src), true) if src == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .map_err(|e| UsageError(format!("reading stdin: {e}")))?;
            let code = String::from_utf8(bytes)
                .map_err(|_| UsageError("stdin is not UTF-8 text".into()))?;
            Ok((code, None))
        }
        (Some(src), true) => {
            let path = Path::new(src);
            // A positional argument naming an existing file is that file; anything else is code.
            if src.len() < 4096 && !src.contains('\n') && path.is_file() {
                let bytes =
                    std::fs::read(path).map_err(|e| UsageError(format!("reading {src}: {e}")))?;
                let code = String::from_utf8(bytes)
                    .map_err(|_| UsageError(format!("{src} is not UTF-8 text")))?;
                Ok((code, language_for_path(path)))
            } else {
                Ok((src.clone(), None))
            }
        }
    }
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

pub async fn run(
    args: RunArgs,
    scheduler: Scheduler,
    request: RunRequest,
    interrupts: Interrupts,
) -> i32 {
    let quiet = args.quiet || args.json;
    if scheduler.config().offline {
        // Let the run itself report what is missing.
    } else if let Err(e) = scheduler
        .ensure_images(&[request.language], Arc::new(BuildProgress::new(quiet)))
        .await
    {
        return report_error(&e, args.json);
    }

    let json = args.json;
    let on_output = move |chunk: sandbox::OutputChunk| {
        if json {
            return;
        }
        // Write errors (a closed pipe) must not abort the run; the result still counts.
        let _ = match chunk.stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&chunk.data).and_then(|_| out.flush())
            }
            Stream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(&chunk.data).and_then(|_| err.flush())
            }
        };
    };
    let outcome = tokio::select! {
        outcome = scheduler.run_streaming(request, on_output) => outcome,
        _ = interrupts.first() => {
            // The run future is dropped here, which kills its VM and removes its files.
            if !quiet {
                eprintln!("sbx: interrupted");
            }
            return exit::INTERRUPTED;
        }
    };
    match outcome {
        Ok(result) => {
            if args.json {
                print_json(&result);
            }
            exit::for_result(&result)
        }
        Err(e) => report_error(&e, args.json),
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("sbx: cannot encode JSON: {e}"),
    }
}

pub fn report_error(err: &sandbox::Error, json: bool) -> i32 {
    if json {
        print_json(&serde_json::json!({
            "error": {
                "kind": err.kind(),
                "message": err.to_string(),
                "retry_safe": err.is_retry_safe(),
                "code_may_have_run": err.code_may_have_run(),
            }
        }));
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
