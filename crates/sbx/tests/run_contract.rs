//! The execution contract (DESIGN.md §5), checked against the built `sbx` binary booting
//! real microVMs. These tests build the guest images on first use (as root).

mod common;

use std::time::{Duration, Instant};

use common::{stderr, stdout, Sbx};

#[test]
fn python_prints_and_exits_zero() {
    let sbx = Sbx::new();
    let out = sbx.run(&["run", "print(6*7)"]);
    assert_eq!(stdout(&out), "42\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    sbx.assert_clean();
}

#[test]
fn typescript_runs_under_javascript() {
    let sbx = Sbx::new();
    let out = sbx.run(&[
        "run",
        "-l",
        "javascript",
        "const x: number = 5; console.log(x * 2)",
    ]);
    assert_eq!(stdout(&out), "10\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn raw_runs_bash_as_user() {
    let sbx = Sbx::new();
    let out = sbx.run(&[
        "run",
        "-l",
        "raw",
        "echo hi | tr a-z A-Z; whoami; pwd; id -u",
    ]);
    assert_eq!(
        stdout(&out),
        "HI\nuser\n/home/user\n1000\n",
        "stderr: {}",
        stderr(&out)
    );
}

#[test]
fn language_is_inferred_from_the_file() {
    let sbx = Sbx::new();
    let dir = tempfile::tempdir().unwrap();
    for (name, code, want) in [
        (
            "script.py",
            "import sys\nprint(sys.version_info[0])\n",
            "3\n",
        ),
        (
            "main.ts",
            "const n: number = 2 ** 5;\nconsole.log(n)\n",
            "32\n",
        ),
        ("job.sh", "echo $((6*7))\n", "42\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, code).unwrap();
        let out = sbx.run(&["run", path.to_str().unwrap()]);
        assert_eq!(stdout(&out), want, "{name}: {}", stderr(&out));
    }
    // JavaScript files keep their flavour: JSX, ES modules.
    for (name, code, want) in [
        (
            "view.tsx",
            "/** @jsxRuntime classic */\n/** @jsx h */\nfunction h(tag: string) { return tag; }\nconsole.log(<section/>);\n",
            "section\n",
        ),
        ("mod.mjs", "export const x = 1;\nconsole.log(import.meta.url.endsWith('.mjs'))\n", "true\n"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, code).unwrap();
        let out = sbx.run(&["run", path.to_str().unwrap()]);
        assert_eq!(stdout(&out), want, "{name}: {}", stderr(&out));
    }
    // `-` reads the code from stdin.
    let out = sbx.run_with_stdin(&["run", "-"], &[], b"print('from stdin')");
    assert_eq!(stdout(&out), "from stdin\n");
}

#[test]
fn output_is_byte_exact() {
    let sbx = Sbx::new();
    let out = sbx.run(&["run", "print('abc', end='')"]);
    assert_eq!(out.stdout, b"abc");
    let out = sbx.run(&[
        "run",
        "import sys; sys.stdout.write('a' * 65535 + '€' * 1000); sys.stdout.write('\\r\\nend')",
    ]);
    let text = String::from_utf8(out.stdout.clone()).expect("valid UTF-8");
    assert_eq!(text.matches('€').count(), 1000);
    assert_eq!(text.matches('a').count(), 65535);
    assert!(!text.contains('\u{fffd}'));
    assert!(text.ends_with("\r\nend"));
    // Invalid UTF-8 passes through untouched.
    let out = sbx.run(&[
        "run",
        "import sys; sys.stdout.buffer.write(b'\\xff\\xfe\\x00ok')",
    ]);
    assert_eq!(out.stdout, b"\xff\xfe\x00ok");
}

#[test]
fn large_javascript_line_arrives_whole_every_time() {
    let sbx = Sbx::new();
    for i in 0..10 {
        let out = sbx.run(&[
            "run",
            "-l",
            "javascript",
            "console.log(\"x\".repeat(200000))",
        ]);
        assert_eq!(
            out.stdout.len(),
            200_001,
            "run {i}: stderr {}",
            stderr(&out)
        );
        assert!(out.stdout[..200_000].iter().all(|&b| b == b'x'));
        assert_eq!(out.stdout[200_000], b'\n');
    }
}

#[test]
fn stdout_is_capped_and_exit_code_kept() {
    let sbx = Sbx::new();
    let (code, json, _) = sbx.run_json(&[
        "import sys\nsys.stdout.write('y' * 2_000_000)\nsys.stdout.flush()\nsys.exit(3)",
    ]);
    assert_eq!(code, 3);
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["stdout_truncated"], true);
    assert_eq!(json["stdout"].as_str().unwrap().len(), 1024 * 1024);
    // Without --json the stream itself stops at the cap.
    let out = sbx.run(&["run", "print('z' * 2_000_000)"]);
    assert_eq!(out.stdout.len(), 1024 * 1024);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn exit_codes_follow_unix_conventions() {
    let sbx = Sbx::new();
    let out = sbx.run(&["run", "import sys; sys.exit(3)"]);
    assert_eq!(out.status.code(), Some(3));
    let out = sbx.run(&["run", "import sys; sys.exit('bad')"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad"));
    let out = sbx.run(&["run", "print('x', flush=True); import os; os._exit(42)"]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(stdout(&out), "x\n");
    let out = sbx.run(&[
        "run",
        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
    ]);
    assert_eq!(out.status.code(), Some(139));
    let out = sbx.run(&["run", "-l", "raw", "kill -KILL $$"]);
    assert_eq!(out.status.code(), Some(137));
    let out = sbx.run(&["run", "-l", "javascript", "process.exit(7)"]);
    assert_eq!(out.status.code(), Some(7));
    let out = sbx.run(&["run", "-l", "javascript", "throw new Error('boom')"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("boom"));
}

#[test]
fn timeout_kills_and_keeps_earlier_output() {
    for code in [
        "import time\nprint('before', flush=True)\ntime.sleep(60)",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('before', flush=True)\ntime.sleep(60)",
    ] {
        let sbx = Sbx::new();
        let t = Instant::now();
        let (status, json, _) = sbx.run_json(&["-t", "2", code]);
        let took = t.elapsed();
        assert!(took < Duration::from_secs(12), "took {took:?}");
        assert_eq!(status, 124);
        assert_eq!(json["timed_out"], true);
        assert_eq!(json["exit_code"], -1);
        assert_eq!(json["stdout"], "before\n");
        assert!(json["stderr"].as_str().unwrap().contains("timed out"));
        sbx.assert_clean();
    }
}

#[test]
fn background_children_do_not_hold_the_run_open() {
    let sbx = Sbx::new();
    let t = Instant::now();
    let out = sbx.run(&["run", "-l", "raw", "-t", "60", "sleep 100 & echo started"]);
    assert_eq!(stdout(&out), "started\n");
    assert_eq!(out.status.code(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn stdin_is_at_eof() {
    let sbx = Sbx::new();
    let (status, json, _) = sbx.run_json(&["input()"]);
    assert_eq!(status, 1);
    assert!(json["stderr"].as_str().unwrap().contains("EOFError"));
    assert!(
        json["timing"]["execute_ms"].as_u64().unwrap() < 2000,
        "{json}"
    );
    let out = sbx.run(&["run", "-l", "raw", "read x; echo $?"]);
    assert_eq!(stdout(&out), "1\n");
}

#[test]
fn env_reaches_the_code() {
    let sbx = Sbx::new();
    let out = sbx.run(&[
        "run",
        "-e",
        "GREETING=hello world",
        "-e",
        "N=€",
        "import os; print(os.environ['GREETING'], os.environ['N'])",
    ]);
    assert_eq!(stdout(&out), "hello world €\n");
}

#[test]
fn json_result_has_timings_and_accelerator() {
    let sbx = Sbx::new();
    let (status, json, _) = sbx.run_json(&["-l", "raw", "echo ok"]);
    assert_eq!(status, 0);
    assert_eq!(json["stdout"], "ok\n");
    for key in [
        "setup_ms",
        "boot_ms",
        "execute_ms",
        "total_ms",
        "boot_retries",
    ] {
        assert!(json["timing"][key].is_u64(), "timing.{key} in {json}");
    }
    assert!(
        ["kvm", "tcg"].contains(&json["accelerator"].as_str().unwrap()),
        "{json}"
    );
    assert_eq!(json["language"], "raw");
}

#[test]
fn four_runs_at_once_all_succeed_and_leave_nothing() {
    let sbx = Sbx::new();
    let children: Vec<_> = (0..4)
        .map(|i| {
            sbx.spawn(&[
                "run",
                "-q",
                &format!("import time; time.sleep(1); print({i})"),
            ])
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(stdout(&out), format!("{i}\n"), "stderr: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(0));
    }
    sbx.assert_clean();
}

#[test]
fn javascript_exit_right_after_a_big_write_keeps_every_byte() {
    let sbx = Sbx::new();
    let out = sbx.run(&[
        "run",
        "-l",
        "javascript",
        "process.stdout.write(\"x\".repeat(1e6)); process.exit(0)",
    ]);
    assert_eq!(out.stdout.len(), 1_000_000, "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn running_out_of_memory_says_so() {
    let sbx = Sbx::new();
    let (status, json, _) = sbx.run_json(&[
        "-m",
        "128",
        "x = []\nwhile True:\n    x.append(' ' * 10**6)",
    ]);
    assert_eq!(status, 137, "{json}");
    assert!(
        json["stderr"].as_str().unwrap().contains("out of memory"),
        "{json}"
    );
}

#[test]
fn json_carries_exact_bytes_of_non_utf8_output() {
    let sbx = Sbx::new();
    let (status, json, _) =
        sbx.run_json(&["import sys; sys.stdout.buffer.write(bytes(range(256)) + b'\\xe2\\x82')"]);
    assert_eq!(status, 0);
    let b64 = json["stdout_base64"]
        .as_str()
        .expect("stdout_base64 for invalid UTF-8");
    let mut want: Vec<u8> = (0..=255u8).collect();
    want.extend([0xe2, 0x82]);
    assert_eq!(decode_base64(b64), want);
    assert!(json.get("stderr_base64").is_none());
}

/// Standard base64 without padding errors tolerated; enough for test data.
fn decode_base64(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .expect("base64 alphabet") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn python_output_streams_without_flushing() {
    let sbx = Sbx::new();
    let (status, json, _) =
        sbx.run_json(&["-t", "2", "print('before')\nimport time\ntime.sleep(60)"]);
    assert_eq!(status, 124);
    assert_eq!(json["stdout"], "before\n");
}

#[test]
fn filling_every_tmpfs_is_the_codes_problem_not_the_vms() {
    let sbx = Sbx::new();
    let (status, json, _) = sbx.run_json(&[
        "-m",
        "128",
        "-l",
        "raw",
        "for d in /tmp /dev/shm /home/user; do head -c 60M /dev/zero > $d/f; done; echo survived",
    ]);
    // Either the writes hit the tmpfs limits or the OOM killer ends the shell; the VM
    // itself must not fall over (that would be an "outcome unknown" error, not JSON).
    assert!(json.get("error").is_none(), "{json}");
    assert!(status == 0 || status == 137, "{status}: {json}");
    // Full tmpfs plus a process that wants all the memory: the OOM killer ends the
    // process; the kernel must not be left with nothing to kill.
    let (status, json, _) = sbx.run_json(&[
        "-m",
        "128",
        "-l",
        "raw",
        "-t",
        "20",
        "for d in /tmp /dev/shm /home/user; do head -c 60M /dev/zero > $d/f; done; x=$(head -c 200M /dev/zero | tr '\\0' a); echo ${#x}",
    ]);
    assert!(json.get("error").is_none(), "{json}");
    // Under that pressure the guest may thrash until the timeout; that is still the
    // code's result (124), not a dead VM.
    assert!([0, 124, 137].contains(&status), "{status}: {json}");
}

#[test]
fn guest_kernel_surface_is_reduced() {
    let sbx = Sbx::new();
    let out = sbx.run(&[
        "run",
        "-l",
        "raw",
        "cat /proc/sys/user/max_user_namespaces; unshare -Ur true 2>/dev/null && echo userns-open || echo userns-closed",
    ]);
    assert_eq!(stdout(&out), "0\nuserns-closed\n", "{}", stderr(&out));
}

#[test]
fn localhost_and_the_guest_name_resolve() {
    let sbx = Sbx::new();
    let out = sbx.run(&[
        "run",
        "import socket\nname = socket.gethostname()\nprint(socket.gethostbyname('localhost'), name, open('/etc/hostname').read().strip(), socket.gethostbyname(name))",
    ]);
    assert_eq!(
        stdout(&out),
        "127.0.0.1 sandbox sandbox 127.0.1.1\n",
        "{}",
        stderr(&out)
    );
}

#[test]
fn code_in_c_may_start_with_a_dash() {
    let sbx = Sbx::new();
    let out = sbx.run(&["run", "-l", "raw", "-c", "-n", "-c", "echo dash"]);
    // `-c -n` is code (a command named -n, which fails), not an unknown flag.
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("dash"));
}
