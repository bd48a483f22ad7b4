//! Drives the built `sbx` binary the way a user does, each test with its own runtime
//! directory so that leaks (QEMU processes, sockets, work dirs) can be checked per test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Sbx {
    pub runtime: tempfile::TempDir,
}

impl Sbx {
    pub fn new() -> Sbx {
        let runtime = tempfile::Builder::new()
            .prefix("sbxt-")
            .tempdir_in("/tmp")
            .expect("temp dir for the test's runtime dir");
        Sbx { runtime }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sbx"));
        c.env("SBX_RUNTIME_DIR", self.runtime.path());
        c.stdin(Stdio::null());
        c
    }

    /// Runs `sbx <args>` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("spawn sbx")
    }

    /// Runs `sbx run --json <args>` and parses the result object.
    pub fn run_json(&self, args: &[&str]) -> (i32, serde_json::Value, Output) {
        let mut full = vec!["run", "--json"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "sbx --json printed no JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), value, out)
    }

    /// Runs `sbx <args>` with `input` on its stdin (and `env` set).
    pub fn run_with_stdin(&self, args: &[&str], env: &[(&str, &str)], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd()
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sbx");
        let mut stdin = child.stdin.take().expect("piped stdin");
        // sbx may stop reading early (input over the limit): a closed pipe is expected then.
        let _ = stdin.write_all(input);
        drop(stdin);
        child.wait_with_output().expect("wait for sbx")
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sbx")
    }

    /// Processes whose command line mentions this test's runtime dir (its QEMUs).
    pub fn leftover_processes(&self) -> Vec<String> {
        processes_mentioning(self.runtime.path())
    }

    /// Waits until no process of this test remains, up to `limit`.
    pub fn wait_no_processes(&self, limit: Duration) -> Vec<String> {
        let until = Instant::now() + limit;
        loop {
            let left = self.leftover_processes();
            if left.is_empty() || Instant::now() > until {
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Files left in the runtime dir other than the registry's own bookkeeping.
    pub fn leftover_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(self.runtime.path(), &mut out);
        out
    }

    pub fn assert_clean(&self) {
        let procs = self.wait_no_processes(Duration::from_secs(5));
        assert!(procs.is_empty(), "processes left behind: {procs:?}");
        let files = self.leftover_files();
        assert!(files.is_empty(), "files left behind: {files:?}");
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
            // An empty directory (the registry's own) is not a leak.
        } else if p.file_name().is_some_and(|n| n != ".lock") {
            out.push(p);
        }
    }
}

pub fn processes_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(&needle) && !text.contains("sbx-test-ignore") {
                // Zombies have an empty cmdline, so a match is a live process.
                found.push(format!("{pid}: {text}"));
            }
        }
    }
    found
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
