//! Sessions and file transfers through the built `sbx` binary, as a user drives them: piped
//! `sbx session` scripts, an interactive session in a pseudo-terminal (tmux), and
//! `sbx run --upload/--download` (issue 3's "done when" list). Each test boots at most a
//! couple of microVMs and checks at the end that nothing of them is left.
//!
//! How piped scripts become calls (crates/sbx/src/blocks.rs): every block a user would have
//! typed at the prompt is one call, and the exit status is the last call's. An open bracket
//! continues a block, so `def f(:` on a line of its own swallows every later line into the
//! same block; it is sent alone only when it is the script's last line. Where a call has to
//! follow it, the tests close the bracket on the next line (`def f(:` / `)` is still the
//! same SyntaxError) or type it at the interactive prompt, where Ctrl+D on a continuation
//! line sends what was typed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{stderr, stdout, Sbx};
use sha2::{Digest, Sha256};

/// A VM boot under TCG on a loaded 2-core machine takes seconds; waits allow for far more.
const BOOT_WAIT: Duration = Duration::from_secs(120);
const STEP_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// Both streams and the status, for assertion messages.
fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// `sbx session <args>` with `script` piped to its stdin.
fn session_script(sbx: &Sbx, args: &[&str], script: &str) -> Output {
    let mut full = vec!["session"];
    full.extend_from_slice(args);
    sbx.run_with_stdin(&full, &[], script.as_bytes())
}

// ---------------------------------------------------------------------------------------
// Piped sessions
// ---------------------------------------------------------------------------------------

#[test]
fn python_session_keeps_state_across_an_exception() {
    let sbx = Sbx::new();
    let out = session_script(
        &sbx,
        &["-l", "python"],
        "x = 1\nx = 2; raise ValueError(\"boom\"); x = 3\nprint(x)\n",
    );
    let err = stderr(&out);
    assert_eq!(stdout(&out), "2\n", "{}", describe(&out));
    assert!(
        err.contains("ValueError: boom"),
        "the exception is reported: {}",
        describe(&out)
    );
    // Calls 0, 1, 0: the middle one's status is noted, the last one's is the exit status.
    assert!(
        err.contains("[exit 1]"),
        "the failed call's status is noted: {}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sbx.assert_clean();
}

/// A piped script is read as a script: empty lines inside definitions are layout, each
/// top-level statement is one call, and a last bare expression is echoed.
#[test]
fn piped_python_script_keeps_empty_lines_inside_definitions() {
    let sbx = Sbx::new();
    let script = "def f():\n    x = 1\n\n\n    return x\n\nclass A:\n    def m(self):\n        return 1\n\n    def n(self):\n        return 2\n\n\nprint(f(), A().n())\nf() * 10\n";
    let out = session_script(&sbx, &["-q"], script);
    assert_eq!(stdout(&out), "1 2\n10\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sbx.assert_clean();
}

/// One line of a child's output and when it was read.
struct Line {
    at: Instant,
    stderr: bool,
    text: String,
}

/// Runs `sbx <args>` with `input` on stdin, timestamping every output line as it arrives.
fn run_timed(sbx: &Sbx, args: &[&str], input: &str) -> (ExitStatus, Vec<Line>) {
    let mut child = sbx
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sbx");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).expect("write the script");
    drop(stdin);
    let (tx, rx) = mpsc::channel();
    let readers: Vec<_> = [
        (
            false,
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        (true, Box::new(child.stderr.take().unwrap())),
    ]
    .into_iter()
    .map(|(is_err, pipe)| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).unwrap_or(0) > 0 {
                let _ = tx.send(Line {
                    at: Instant::now(),
                    stderr: is_err,
                    text: String::from_utf8_lossy(&buf).trim_end().to_string(),
                });
                buf.clear();
            }
        })
    })
    .collect();
    drop(tx);
    let status = child.wait().expect("wait for sbx");
    for r in readers {
        r.join().unwrap();
    }
    let mut lines: Vec<Line> = rx.into_iter().collect();
    lines.sort_by_key(|l| l.at);
    (status, lines)
}

fn transcript(lines: &[Line]) -> String {
    lines
        .iter()
        .map(|l| format!("{} {}", if l.stderr { "err|" } else { "out|" }, l.text))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn python_syntax_errors_answer_at_once_and_the_session_goes_on() {
    let sbx = Sbx::new();
    // Blocks (see the module comment): `print("warm")`, `def f(:\n)`, `print("after")`,
    // `def f(:` (the last line, so sent as it stands: incomplete input).
    let script = "print(\"warm\")\ndef f(:\n)\n\nprint(\"after\")\ndef f(:\n";
    let (status, lines) = run_timed(&sbx, &["session", "-l", "python"], script);
    let shown = transcript(&lines);
    let find = |from: usize, pred: &dyn Fn(&Line) -> bool| {
        lines[from..]
            .iter()
            .position(pred)
            .map(|i| i + from)
            .unwrap_or_else(|| panic!("expected line missing from:\n{shown}"))
    };
    let warm = find(0, &|l| !l.stderr && l.text == "warm");
    let first_error = find(warm, &|l| l.stderr && l.text.contains("SyntaxError"));
    let after = find(first_error, &|l| !l.stderr && l.text == "after");
    let second_error = find(after, &|l| l.stderr && l.text.contains("SyntaxError"));
    let first = lines[first_error].at - lines[warm].at;
    let second = lines[second_error].at - lines[after].at;
    eprintln!("SyntaxError answered {first:?} after the previous call's output (bracket closed), {second:?} (incomplete `def f(:`)");
    for (what, took) in [("def f(:\\n)", first), ("def f(:", second)] {
        assert!(
            took < Duration::from_secs(2),
            "{what}: the SyntaxError took {took:?}:\n{shown}"
        );
    }
    assert!(
        !shown.contains("timed out"),
        "no call waited for more input:\n{shown}"
    );
    // The last call is the SyntaxError, so the session's status is its 1.
    assert_eq!(status.code(), Some(1), "{shown}");
    sbx.assert_clean();
}

#[test]
fn raw_session_keeps_cwd_exports_and_functions() {
    let sbx = Sbx::new();
    let out = session_script(
        &sbx,
        &["-l", "raw"],
        "cd /tmp && export V=7 && f() { echo fn; }\npwd; echo $V; f\n",
    );
    assert_eq!(stdout(&out), "/tmp\n7\nfn\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sbx.assert_clean();
}

#[test]
fn session_timeout_kills_everything_the_call_started() {
    let sbx = Sbx::new();
    let started = Instant::now();
    let out = session_script(
        &sbx,
        &["-l", "raw", "-t", "3"],
        concat!(
            "(sleep 100; touch /tmp/late) & sleep 100\n",
            "ps -e -o stat=,comm=; ",
            "pgrep -x sleep >/dev/null; echo \"pgrep:$?\"; ",
            "test -e /tmp/late && echo late:yes || echo late:no\n",
        ),
    );
    let took = started.elapsed();
    let text = stdout(&out);
    assert!(
        took < Duration::from_secs(90),
        "the timed-out call held the session for {took:?}: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("timed out"),
        "the first call's timeout is reported: {}",
        describe(&out)
    );
    let procs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.trim().split_once(char::is_whitespace))
        .map(|(stat, comm)| (stat, comm.trim()))
        .collect();
    assert!(
        procs.iter().any(|&(_, comm)| comm == "ps"),
        "the check call listed processes: {}",
        describe(&out)
    );
    assert!(
        !procs.iter().any(|&(_, comm)| comm == "sleep"),
        "a sleep survived the timeout: {}",
        describe(&out)
    );
    assert!(
        !procs.iter().any(|&(stat, _)| stat.starts_with('Z')),
        "a zombie is left: {}",
        describe(&out)
    );
    assert!(text.contains("pgrep:1\n"), "{}", describe(&out));
    assert!(text.contains("late:no\n"), "{}", describe(&out));
    // The status is the last call's: the check, which succeeded.
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // With the timeout in the last call, the session's status is the timeout's.
    let out = session_script(&sbx, &["-l", "raw", "-t", "3"], "echo before\nsleep 100\n");
    assert_eq!(stdout(&out), "before\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(124), "{}", describe(&out));
    sbx.assert_clean();
}

#[test]
fn typescript_session_keeps_definitions_and_awaits_at_top_level() {
    let sbx = Sbx::new();
    let out = session_script(
        &sbx,
        &["-l", "javascript"],
        concat!(
            "const greet = (n: string): string => \"hi \" + n\n",
            "console.log(greet(\"a\"))\n",
            "await new Promise(r => setTimeout(r, 10)); console.log(\"done\")\n",
        ),
    );
    assert_eq!(stdout(&out), "hi a\ndone\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    sbx.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Files: `sbx run --upload/--download`
// ---------------------------------------------------------------------------------------

/// Names of the entries in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

#[test]
fn empty_files_round_trip() {
    let sbx = Sbx::new();
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let out = sbx.run(&[
        "run",
        "-l",
        "raw",
        "--upload",
        &format!("{}:in/empty", path_str(&empty)),
        "--download",
        &format!("in/empty:{}/back", path_str(&down)),
        "--download",
        &format!("made:{}/made", path_str(&down)),
        "stat -c %s in/empty; : > made",
    ]);
    assert_eq!(stdout(&out), "0\n", "{}", describe(&out));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(entries(&down), ["back", "made"], "{}", describe(&out));
    for name in ["back", "made"] {
        let len = std::fs::metadata(down.join(name)).unwrap().len();
        assert_eq!(len, 0, "{name} came back with {len} bytes");
    }
    sbx.assert_clean();
}

/// `len` random bytes written to `path`; returns their sha256.
fn random_file(path: &Path, len: usize) -> [u8; 32] {
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        urandom.read_exact(&mut buf[..n]).unwrap();
        hash.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    file.flush().unwrap();
    hash.finalize().into()
}

fn sha256_of(path: &Path) -> [u8; 32] {
    let mut file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    hash.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `VmHWM` (peak resident set) in a `/proc/<pid>/status` text, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `cmd` to completion, reading `/proc/<pid>/status` every 50 ms; returns its output
/// and the last peak resident set seen (KiB). Gives up (killing it) after `limit`.
fn run_measuring_peak_rss(mut cmd: Command, limit: Duration) -> (Output, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sbx");
    let pid = child.id();
    let drain = |pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out_reader = drain(Box::new(child.stdout.take().unwrap()));
    let err_reader = drain(Box::new(child.stderr.take().unwrap()));
    let until = Instant::now() + limit;
    let mut peak = 0;
    let status = loop {
        // A zombie's status has no VmHWM line: the last live value stands.
        if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .as_deref()
            .and_then(vm_hwm_kib)
        {
            peak = kib;
        }
        if let Some(status) = child.try_wait().expect("wait for sbx") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sbx did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    (out, peak)
}

#[test]
fn a_200_mb_file_round_trips_with_bounded_memory() {
    const SIZE: usize = 200 * 1024 * 1024;
    let sbx = Sbx::new();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    let want = random_file(&big, SIZE);
    let back = dir.path().join("back.bin");
    let mut cmd = sbx.cmd();
    // Default memory, as a user would run it.
    cmd.args([
        "run",
        "-l",
        "raw",
        "-t",
        "120",
        "--upload",
        &format!("{}:data/big.bin", path_str(&big)),
        "--download",
        &format!("data/big.bin:{}", path_str(&back)),
        "stat -c %s data/big.bin; grep VmHWM /proc/$(pgrep -o -x agent)/status",
    ]);
    let (out, sbx_peak_kib) = run_measuring_peak_rss(cmd, Duration::from_secs(600));
    eprintln!(
        "peak RSS of sbx for a 200 MiB upload + download: {sbx_peak_kib} KiB ({:.1} MiB)",
        sbx_peak_kib as f64 / 1024.0
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(SIZE.to_string().as_str()),
        "the guest sees the whole file: {}",
        describe(&out)
    );
    let agent_peak_kib = lines
        .next()
        .and_then(vm_hwm_kib)
        .unwrap_or_else(|| panic!("no VmHWM for the guest agent: {}", describe(&out)));
    eprintln!(
        "peak RSS of the guest agent after the 200 MiB upload: {agent_peak_kib} KiB ({:.1} MiB)",
        agent_peak_kib as f64 / 1024.0
    );
    assert_eq!(
        std::fs::metadata(&back).map(|m| m.len()).ok(),
        Some(SIZE as u64),
        "downloaded size: {}",
        describe(&out)
    );
    assert_eq!(
        hex(&sha256_of(&back)),
        hex(&want),
        "the file came back different"
    );
    assert!(
        sbx_peak_kib > 0 && sbx_peak_kib < 100 * 1024,
        "sbx peaked at {sbx_peak_kib} KiB for a 200 MiB file"
    );
    assert!(
        agent_peak_kib < 64 * 1024,
        "the guest agent peaked at {agent_peak_kib} KiB for a 200 MiB file"
    );
    assert_eq!(
        entries(dir.path()),
        ["back.bin", "big.bin"],
        "no partial files"
    );
    sbx.assert_clean();
}

#[test]
fn guest_paths_leaving_home_are_refused_before_a_vm_starts() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"payload\n").unwrap();
    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let f = path_str(&f);
    let d = path_str(&down);
    for (flag, spec, path) in [
        ("--upload", format!("{f}:../../etc/x"), "../../etc/x"),
        ("--upload", format!("{f}:/etc/x"), "/etc/x"),
        ("--upload", format!("{f}:a/../../tmp/x"), "a/../../tmp/x"),
        (
            "--download",
            format!("../../etc/shadow:{d}/x"),
            "../../etc/shadow",
        ),
        ("--download", format!("/etc/shadow:{d}/x"), "/etc/shadow"),
    ] {
        let sbx = Sbx::new();
        // Reaching QEMU at all would end differently (the sandbox failing, 125).
        let out = sbx
            .cmd()
            .env("SBX_QEMU", "/nonexistent/qemu")
            .args(["run", "-l", "raw", flag, &spec, "echo ran"])
            .output()
            .unwrap();
        let what = format!("{flag} {spec}: {}", describe(&out));
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(
            stderr(&out).contains(path),
            "the message names {path}: {what}"
        );
        assert!(stdout(&out).is_empty(), "{what}");
        assert!(sbx.leftover_processes().is_empty(), "{what}");
        assert!(entries(&down).is_empty(), "{what}");
        sbx.assert_clean();
    }
}

#[test]
fn downloads_never_follow_symlinks_out_of_home() {
    let sbx = Sbx::new();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"payload\n").unwrap();
    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let d = path_str(&down);
    // The uploads happen before the code and the downloads after it, so the code sees what
    // the uploads did; downloads only read, as the user. A path with `..` that stays in
    // home is normalised (`sub/../etc/x` is `etc/x`, i.e. /home/user/etc/x).
    let code = concat!(
        "test -e /etc/x && echo etc-x:yes || echo etc-x:no\n",
        "echo \"outside:$(find /tmp /dev/shm -mindepth 1 | wc -l)\"\n",
        "cat etc/x\n",
        "ln -s /etc/shadow leak\n",
        "ln -s /etc d\n",
        "echo secret > /tmp/s && ln -s /tmp/s tl\n",
        "ln -s etc/x inside\n",
    );
    let out = sbx.run(&[
        "run",
        "-l",
        "raw",
        "--upload",
        &format!("{}:sub/../etc/x", path_str(&f)),
        "--download",
        &format!("leak:{d}/shadow"),
        "--download",
        &format!("d/passwd:{d}/passwd"),
        "--download",
        &format!("tl:{d}/tl"),
        "--download",
        &format!("inside:{d}/inside"),
        code,
    ]);
    let what = describe(&out);
    assert_eq!(
        stdout(&out),
        "etc-x:no\noutside:0\npayload\n",
        "the upload stayed in home: {what}"
    );
    let err = stderr(&out);
    for guest in ["leak", "d/passwd", "tl"] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("sbx: download {guest}:")))
            .unwrap_or_else(|| panic!("no refusal for {guest}: {what}"));
        assert!(
            line.contains("outside the home directory"),
            "{guest} is refused as leaving home: {what}"
        );
    }
    // The code succeeded and a download failed: the transfer status.
    assert_eq!(out.status.code(), Some(123), "{what}");
    // Only the link that stays in home was followed; nothing else, not even a partial
    // temporary file, landed locally.
    assert_eq!(entries(&down), ["inside"], "{what}");
    assert_eq!(std::fs::read(down.join("inside")).unwrap(), b"payload\n");
    sbx.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Interactive session in a pseudo-terminal
// ---------------------------------------------------------------------------------------

/// A tmux server of this test's own, on a socket in a private directory (so it shares
/// nothing with other servers and leaves no socket file behind), killed on every path out.
struct Tmux {
    dir: tempfile::TempDir,
}

impl Tmux {
    fn new() -> Tmux {
        let dir = tempfile::Builder::new()
            .prefix("sbxt-tmux-")
            .tempdir_in("/tmp")
            .expect("a directory for the tmux socket");
        Tmux { dir }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(self.dir.path().join("socket"));
        c.env_remove("TMUX");
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self
            .cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux ({e}); scripts/setup.sh installs it"));
        assert!(out.status.success(), "tmux {args:?}: {}", describe(&out));
        out
    }

    fn pane(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "main"])
            .output()
            .expect("tmux capture-pane");
        stdout(&out)
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "main"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Polls the pane until `done` holds; panics with the pane after `limit`.
    fn wait(&self, what: &str, limit: Duration, done: impl Fn(&Screen) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let screen = Screen(self.pane());
            if done(&screen) {
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!("waited {limit:?} for {what}; the pane shows:\n{}", screen.0);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A capture of the pane (tmux strips trailing blanks, so a prompt `>>> ` shows as `>>>`).
struct Screen(String);

impl Screen {
    fn lines(&self) -> impl Iterator<Item = &str> {
        self.0.lines().map(str::trim_end)
    }

    /// The prompt lines (`>>>` or `>>> typed text`) so far.
    fn prompts(&self) -> usize {
        self.lines().filter(|l| l.starts_with(">>>")).count()
    }

    /// The last non-blank line is exactly `prompt` (the cursor waits there).
    fn waits_at(&self, prompt: &str) -> bool {
        self.lines().filter(|l| !l.is_empty()).last() == Some(prompt)
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines().any(|l| l == line)
    }
}

/// `s` as one word for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn interactive_python_session_in_a_terminal() {
    let sbx = Sbx::new();
    let scratch = tempfile::tempdir().unwrap();
    let exit_file = scratch.path().join("exit");
    let state = scratch.path().join("state");
    let script = format!(
        "env SBX_RUNTIME_DIR={} XDG_STATE_HOME={} {} session -l python; echo \"EXIT:$?\" > {}",
        sh_quote(path_str(sbx.runtime.path())),
        sh_quote(path_str(&state)),
        sh_quote(env!("CARGO_BIN_EXE_sbx")),
        sh_quote(path_str(&exit_file)),
    );
    let tmux = Tmux::new();
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "main",
        "-x",
        "160",
        "-y",
        "50",
        "sh",
        "-c",
        &script,
    ]);
    tmux.wait("the first prompt", BOOT_WAIT, |s| {
        s.prompts() == 1 && s.waits_at(">>>")
    });
    tmux.keys(&["x = 41", "Enter"]);
    tmux.wait("the prompt after `x = 41`", STEP_WAIT, |s| {
        s.prompts() == 2 && s.waits_at(">>>")
    });
    tmux.keys(&["print(x + 1)", "Enter"]);
    tmux.wait("42", STEP_WAIT, |s| {
        s.has_line("42") && s.prompts() == 3 && s.waits_at(">>>")
    });

    // Incomplete input: the prompt waits for more; Ctrl+D sends it as it stands, and the
    // REPL answers with a SyntaxError at once.
    tmux.keys(&["def f(:", "Enter"]);
    tmux.wait("the continuation prompt", STEP_WAIT, |s| s.waits_at("..."));
    let started = Instant::now();
    tmux.keys(&["C-d"]);
    tmux.wait("the SyntaxError", STEP_WAIT, |s| {
        s.lines().any(|l| l.starts_with("SyntaxError")) && s.prompts() == 4 && s.waits_at(">>>")
    });
    let took = started.elapsed();
    eprintln!("interactive `def f(:` + Ctrl+D: SyntaxError and the next prompt after {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the SyntaxError took {took:?}:\n{}",
        tmux.pane()
    );
    tmux.keys(&["print(x, 'again')", "Enter"]);
    tmux.wait("the call after the SyntaxError", STEP_WAIT, |s| {
        s.has_line("41 again") && s.prompts() == 5 && s.waits_at(">>>")
    });

    // Ctrl+D at an empty prompt ends the session cleanly.
    tmux.keys(&["C-d"]);
    let until = Instant::now() + STEP_WAIT;
    let status = loop {
        match std::fs::read_to_string(&exit_file) {
            Ok(s) if s.ends_with('\n') => break s,
            _ if Instant::now() > until => {
                panic!(
                    "sbx did not exit after Ctrl+D; the pane shows:\n{}",
                    tmux.pane()
                )
            }
            _ => std::thread::sleep(POLL),
        }
    };
    assert_eq!(status.trim(), "EXIT:0");
    let until = Instant::now() + STEP_WAIT;
    while tmux.alive() {
        assert!(Instant::now() < until, "the tmux session outlived sbx");
        std::thread::sleep(POLL);
    }
    // The entered lines went to the history file.
    let history = std::fs::read_to_string(state.join("exec-sandbox/history-python"))
        .expect("the history file");
    for line in ["x = 41", "print(x + 1)"] {
        assert!(
            history.lines().any(|l| l == line),
            "{line:?} missing from the history:\n{history}"
        );
    }
    drop(tmux);
    sbx.assert_clean();
}
