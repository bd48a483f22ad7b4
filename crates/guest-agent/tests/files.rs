//! Host tests of the file service. They need root (to take a test user's file identity) and
//! use uid/gid 31337 with a scratch directory chowned to it as the "home". Next to that home
//! sits an `outside` directory, world-writable and world-readable, so that only the
//! beneath-home resolution — not permissions — can be what keeps the service out of it.

use guest_agent::channel::ChannelError;
use guest_agent::files::{serve_list, serve_read, serve_write, Conversation, User};
use protocol::{
    FileEntry, FileErrorKind, FileKind, GuestMessage, HostMessage, MAX_CHUNK, MAX_LISTING,
};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TEST_UID: u32 = 31337;

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return true;
    }
    eprintln!("skipped: these tests need root to act as uid {TEST_UID}");
    false
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch tree `base/{home,outside}`, removed on drop. `base` is root's and 0755, so the
/// user can reach home but cannot rename anything in or out of it.
struct Fixture {
    base: PathBuf,
    home: PathBuf,
    outside: PathBuf,
    user: User,
}

impl Fixture {
    fn new() -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("guest-agent-files-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let home = base.join("home");
        let outside = base.join("outside");
        for (dir, mode) in [(&base, 0o755), (&home, 0o755), (&outside, 0o777)] {
            fs::create_dir(dir).expect("create a scratch directory");
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        chown(&home, Some(TEST_UID), Some(TEST_UID)).expect("chown home");
        Fixture {
            user: User {
                uid: TEST_UID,
                gid: TEST_UID,
                home: home.clone(),
            },
            base,
            home,
            outside,
        }
    }

    /// A file in home, owned by the user, mode 0644.
    fn user_file(&self, rel: &str, content: &[u8]) -> PathBuf {
        let path = self.home.join(rel);
        fs::write(&path, content).expect("write fixture file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        chown(&path, Some(TEST_UID), Some(TEST_UID)).expect("chown");
        path
    }

    fn user_dir(&self, rel: &str, mode: u32) -> PathBuf {
        let path = self.home.join(rel);
        fs::create_dir(&path).expect("create fixture dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        chown(&path, Some(TEST_UID), Some(TEST_UID)).expect("chown");
        path
    }

    fn user_symlink(&self, rel: &str, target: impl AsRef<Path>) {
        let path = self.home.join(rel);
        symlink(target, &path).expect("create fixture symlink");
        lchown(&path, Some(TEST_UID), Some(TEST_UID)).expect("lchown");
    }

    /// A file outside home that anyone could write: only containment protects it.
    fn outside_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.outside.join(name);
        fs::write(&path, content).expect("write outside file");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod");
        path
    }

    fn outside_names(&self) -> Vec<String> {
        names_in(&self.outside)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Deterministic pseudo-random bytes (xorshift64*), reproducible from the seed so a large
/// file can be generated and checked without holding it in memory.
#[derive(Clone)]
struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern(seed | 1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        Pattern::new(seed).fill(&mut v);
        v
    }
}

/// A scripted host: hands out `incoming` (then reports the channel dead), records answers.
/// `FileData` answers are recorded without their bytes, which go to `data` or, with
/// `verify`, are compared against a pattern on the fly.
struct Host {
    incoming: Box<dyn Iterator<Item = HostMessage> + Send>,
    out: Vec<GuestMessage>,
    data: Vec<u8>,
    verify: Option<(Pattern, bool)>,
    data_len: u64,
    biggest_chunk: usize,
    /// Fail the channel on the n-th `FileData` sent.
    fail_at_chunk: Option<usize>,
}

impl Host {
    fn new(incoming: impl Iterator<Item = HostMessage> + Send + 'static) -> Host {
        Host {
            incoming: Box::new(incoming),
            out: Vec::new(),
            data: Vec::new(),
            verify: None,
            data_len: 0,
            biggest_chunk: 0,
            fail_at_chunk: None,
        }
    }

    fn idle() -> Host {
        Host::new(std::iter::empty())
    }

    fn answers(&self) -> Vec<&GuestMessage> {
        self.out
            .iter()
            .filter(|m| !matches!(m, GuestMessage::FileData { .. }))
            .collect()
    }
}

impl Conversation for Host {
    fn recv(&mut self) -> Result<HostMessage, ChannelError> {
        self.incoming.next().ok_or_else(|| {
            ChannelError::Read(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the script ended",
            ))
        })
    }

    fn send(&mut self, msg: &GuestMessage) -> Result<(), ChannelError> {
        if let GuestMessage::FileData { data } = msg {
            let chunks = self
                .out
                .iter()
                .filter(|m| matches!(m, GuestMessage::FileData { .. }))
                .count();
            if self.fail_at_chunk == Some(chunks) {
                return Err(ChannelError::Write(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the host went away",
                )));
            }
            self.biggest_chunk = self.biggest_chunk.max(data.len());
            self.data_len += data.len() as u64;
            match &mut self.verify {
                Some((pattern, ok)) => {
                    let mut expected = vec![0; data.len()];
                    pattern.fill(&mut expected);
                    *ok &= expected == *data;
                }
                None => self.data.extend_from_slice(data),
            }
            self.out.push(GuestMessage::FileData { data: Vec::new() });
        } else {
            self.out.push(msg.clone());
        }
        Ok(())
    }
}

/// The messages of a whole write of `data`, in `chunk`-byte pieces, then `FileEnd`.
fn write_script(data: &[u8], chunk: usize) -> Vec<HostMessage> {
    data.chunks(chunk.max(1))
        .map(|c| HostMessage::FileData { data: c.to_vec() })
        .chain([HostMessage::FileEnd])
        .collect()
}

/// Writes `data` at `path` and returns the one answer.
fn write(fx: &Fixture, path: &str, data: &[u8], executable: bool) -> GuestMessage {
    let mut host = Host::new(write_script(data, MAX_CHUNK).into_iter());
    serve_write(&mut host, &fx.user, path, executable).expect("channel stays up");
    one_answer(&host)
}

fn one_answer(host: &Host) -> GuestMessage {
    let answers = host.answers();
    assert_eq!(answers.len(), 1, "exactly one answer: {answers:?}");
    answers[0].clone()
}

/// Reads `path`: its bytes and the final answer.
fn read(fx: &Fixture, path: &str) -> (Vec<u8>, GuestMessage) {
    let mut host = Host::idle();
    serve_read(&mut host, &fx.user, path).expect("channel stays up");
    let answer = one_answer(&host);
    assert!(
        matches!(host.out.last(), Some(m) if *m == answer),
        "the answer comes last"
    );
    assert!(host.biggest_chunk <= MAX_CHUNK);
    (host.data, answer)
}

fn list(fx: &Fixture, path: &str) -> GuestMessage {
    let mut host = Host::idle();
    serve_list(&mut host, &fx.user, path).expect("channel stays up");
    one_answer(&host)
}

#[track_caller]
fn assert_failed(msg: &GuestMessage, kind: FileErrorKind) -> String {
    match msg {
        GuestMessage::FileFailed { kind: k, message } => {
            assert_eq!(*k, kind, "{message}");
            assert!(!message.is_empty());
            message.clone()
        }
        other => panic!("expected FileFailed({kind:?}), got {other:?}"),
    }
}

#[track_caller]
fn assert_done(msg: &GuestMessage, size: u64) {
    assert_eq!(*msg, GuestMessage::FileDone { size });
}

fn temp_files_in(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(".sbx-write-"))
        .collect()
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

fn owner_of(path: &Path) -> (u32, u32) {
    let md = fs::symlink_metadata(path).expect("stat");
    (md.uid(), md.gid())
}

#[test]
fn round_trips_exact_bytes_at_chunk_boundaries() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let sizes = [
        0,
        1,
        1000,
        MAX_CHUNK - 1,
        MAX_CHUNK,
        MAX_CHUNK + 1,
        3 * MAX_CHUNK + 17,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let data = Pattern::bytes(i as u64 + 7, size);
        let path = format!("file-{size}.bin");
        assert_done(&write(&fx, &path, &data, false), size as u64);
        let on_disk = fx.home.join(&path);
        assert_eq!(
            fs::read(&on_disk).expect("read back"),
            data,
            "{path} on disk"
        );
        assert_eq!(mode_of(&on_disk), 0o644);
        assert_eq!(owner_of(&on_disk), (TEST_UID, TEST_UID));
        let (got, answer) = read(&fx, &path);
        assert_done(&answer, size as u64);
        assert!(got == data, "{path} read back differs");
    }
    // Odd chunk sizes from the host are fine too.
    let data = Pattern::bytes(99, 100_000);
    let mut host = Host::new(write_script(&data, 777).into_iter());
    serve_write(&mut host, &fx.user, "odd.bin", false).expect("channel");
    assert_done(&one_answer(&host), 100_000);
    assert!(fs::read(fx.home.join("odd.bin")).expect("read") == data);
    assert_eq!(temp_files_in(&fx.home), Vec::<String>::new());
}

fn status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

#[test]
fn a_large_file_streams_in_bounded_memory() {
    if !is_root() {
        return;
    }
    const SIZE: u64 = 50 << 20;
    const SEED: u64 = 0x5eed;
    let fx = Fixture::new();
    // "5" resets the peak to the current RSS, so the peak measures this test (other tests
    // running alongside add a little, which the generous bound absorbs).
    let reset = fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = if reset {
        status_kib("VmRSS")
    } else {
        status_kib("VmHWM")
    };

    let mut pattern = Pattern::new(SEED);
    let mut left = SIZE;
    let chunks = std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(MAX_CHUNK as u64) as usize;
        left -= n as u64;
        let mut data = vec![0; n];
        pattern.fill(&mut data);
        Some(HostMessage::FileData { data })
    })
    .chain([HostMessage::FileEnd]);
    let mut host = Host::new(chunks);
    let started = Instant::now();
    serve_write(&mut host, &fx.user, "big/file.bin", true).expect("channel");
    assert_done(&one_answer(&host), SIZE);
    let write_time = started.elapsed();
    let path = fx.home.join("big/file.bin");
    assert_eq!(fs::metadata(&path).expect("stat").len(), SIZE);
    assert_eq!(mode_of(&path), 0o755);

    let mut host = Host::idle();
    host.verify = Some((Pattern::new(SEED), true));
    let started = Instant::now();
    serve_read(&mut host, &fx.user, "big/file.bin").expect("channel");
    let read_time = started.elapsed();
    assert_done(&one_answer(&host), SIZE);
    assert_eq!(host.data_len, SIZE);
    assert!(matches!(host.verify, Some((_, true))), "read-back differs");
    assert_eq!(host.biggest_chunk, MAX_CHUNK);

    let peak = status_kib("VmHWM");
    let growth = peak.saturating_sub(before);
    eprintln!(
        "50 MiB: write {write_time:?}, read {read_time:?}; peak RSS {peak} KiB, \
         {growth} KiB above the start (peak reset: {reset})"
    );
    assert!(growth < 32 * 1024, "peak RSS grew by {growth} KiB");
}

#[test]
fn modes_are_explicit_and_parents_are_created() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    // A restrictive umask must not narrow what we create.
    // SAFETY: umask has no preconditions; the fixtures of concurrently running tests set
    // their modes explicitly, so they do not depend on it.
    let old = unsafe { libc::umask(0o077) };
    let exec = write(&fx, "a/b/c/run.sh", b"#!/bin/sh\necho hi\n", true);
    let plain = write(&fx, "a/b/other.txt", b"x", false);
    let top = write(&fx, "top.txt", b"", false);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    assert_done(&exec, 18);
    assert_done(&plain, 1);
    assert_done(&top, 0);
    assert_eq!(mode_of(&fx.home.join("a/b/c/run.sh")), 0o755);
    assert_eq!(mode_of(&fx.home.join("a/b/other.txt")), 0o644);
    assert_eq!(fs::read(fx.home.join("top.txt")).expect("read"), b"");
    for dir in ["a", "a/b", "a/b/c"] {
        let dir = fx.home.join(dir);
        assert!(dir.is_dir());
        assert_eq!(mode_of(&dir), 0o755, "{dir:?}");
        assert_eq!(owner_of(&dir), (TEST_UID, TEST_UID), "{dir:?}");
    }
    // Replacing flips the mode both ways.
    assert_done(&write(&fx, "a/b/c/run.sh", b"no", false), 2);
    assert_eq!(mode_of(&fx.home.join("a/b/c/run.sh")), 0o644);
    assert_done(&write(&fx, "a/b/other.txt", b"yes", true), 3);
    assert_eq!(mode_of(&fx.home.join("a/b/other.txt")), 0o755);
}

#[test]
fn a_failed_write_leaves_the_old_file_untouched() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let old = Pattern::bytes(1, 3 * MAX_CHUNK);
    let target = fx.user_file("keep.bin", &old);
    let new = Pattern::bytes(2, 5 * MAX_CHUNK);
    let check = |what: &str| {
        assert!(
            fs::read(&target).expect("read") == old,
            "{what}: old file changed"
        );
        assert_eq!(temp_files_in(&fx.home), Vec::<String>::new(), "{what}");
    };

    // The channel dies midway: an error for the agent, no answer, nothing committed.
    let script: Vec<HostMessage> = write_script(&new, MAX_CHUNK).into_iter().take(3).collect();
    let mut host = Host::new(script.into_iter());
    assert!(serve_write(&mut host, &fx.user, "keep.bin", false).is_err());
    assert!(host.answers().is_empty());
    check("channel cut");

    // The host abandons the write: one FileFailed, nothing committed, nothing more read.
    let script = write_script(&new, MAX_CHUNK).into_iter().take(2).chain([
        HostMessage::FileAbort,
        HostMessage::ListFiles {
            path: "next".into(),
        },
    ]);
    let mut host = Host::new(script);
    serve_write(&mut host, &fx.user, "keep.bin", false).expect("channel");
    assert_failed(&one_answer(&host), FileErrorKind::Other);
    assert_eq!(
        host.incoming.next(),
        Some(HostMessage::ListFiles {
            path: "next".into()
        })
    );
    check("abort");

    // A chunk over the limit is refused; the rest of the write is consumed, no further.
    let script = [
        HostMessage::FileData { data: vec![1; 10] },
        HostMessage::FileData {
            data: vec![2; MAX_CHUNK + 1],
        },
        HostMessage::FileData { data: vec![3; 10] },
        HostMessage::FileEnd,
        HostMessage::ReadFile {
            path: "next".into(),
        },
    ];
    let mut host = Host::new(script.into_iter());
    serve_write(&mut host, &fx.user, "keep.bin", false).expect("channel");
    assert_failed(&one_answer(&host), FileErrorKind::Other);
    assert_eq!(
        host.incoming.next(),
        Some(HostMessage::ReadFile {
            path: "next".into()
        })
    );
    check("oversized chunk");
}

#[test]
fn permission_failures_are_the_users_own() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    // A directory the user cannot write: the old file stays, and all the data the host sends
    // after the early FileFailed is consumed up to FileEnd.
    fx.user_dir("ro", 0o755);
    let kept = fx.user_file("ro/f", b"old");
    fs::set_permissions(fx.home.join("ro"), fs::Permissions::from_mode(0o555)).expect("chmod");
    let mut script = write_script(&Pattern::bytes(3, 4 * MAX_CHUNK), MAX_CHUNK);
    script.push(HostMessage::ListFiles {
        path: "next".into(),
    });
    let mut host = Host::new(script.into_iter());
    serve_write(&mut host, &fx.user, "ro/f", false).expect("channel");
    assert_failed(&one_answer(&host), FileErrorKind::PermissionDenied);
    assert_eq!(
        host.incoming.next(),
        Some(HostMessage::ListFiles {
            path: "next".into()
        })
    );
    assert_eq!(fs::read(&kept).expect("read"), b"old");
    assert_failed(
        &write(&fx, "ro/new/deeper", b"x", false),
        FileErrorKind::PermissionDenied,
    );

    // Root's private file in the user's home: root could read it, the user cannot, and
    // neither can we on the user's behalf.
    let secret = fx.home.join("secret");
    fs::write(&secret, b"root only").expect("write");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
    let (data, answer) = read(&fx, "secret");
    assert_failed(&answer, FileErrorKind::PermissionDenied);
    assert!(data.is_empty());

    // Root's private directory: neither listable nor writable.
    let private = fx.home.join("private");
    fs::create_dir(&private).expect("mkdir");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).expect("chmod");
    assert_failed(&list(&fx, "private"), FileErrorKind::PermissionDenied);
    assert_failed(
        &write(&fx, "private/x", b"x", false),
        FileErrorKind::PermissionDenied,
    );
    assert_eq!(names_in(&private), Vec::<String>::new());
}

#[test]
fn invalid_paths_are_refused() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fx.user_file("a", b"x");
    let long_component = "c".repeat(256);
    let long_path = vec!["d".repeat(200); 21].join("/");
    assert!(long_path.len() > 4096);
    let bad = [
        "../x",
        "a/../a",
        "..",
        "./a",
        "a/.",
        "/etc/passwd",
        "/",
        "a//b",
        "a/",
        "a\0b",
        &long_component,
        &long_path,
    ];
    for path in bad {
        let mut script = write_script(b"data", 2);
        script.push(HostMessage::ListFiles {
            path: "next".into(),
        });
        let mut host = Host::new(script.into_iter());
        serve_write(&mut host, &fx.user, path, false).expect("channel");
        assert_failed(&one_answer(&host), FileErrorKind::InvalidPath);
        assert_eq!(
            host.incoming.next(),
            Some(HostMessage::ListFiles {
                path: "next".into()
            }),
            "{path:?}: the write is consumed up to FileEnd"
        );
        assert_failed(&read(&fx, path).1, FileErrorKind::InvalidPath);
        assert_failed(&list(&fx, path), FileErrorKind::InvalidPath);
    }
    assert_failed(&write(&fx, "", b"x", false), FileErrorKind::InvalidPath);
    assert_failed(&read(&fx, "").1, FileErrorKind::InvalidPath);
    assert!(matches!(list(&fx, ""), GuestMessage::Listing { .. }));
    // Nothing was created anywhere.
    assert_eq!(names_in(&fx.home), ["a"]);
    assert_eq!(names_in(&fx.base), ["home", "outside"]);
}

#[test]
fn symlinks_out_of_home_are_never_followed() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let secret = fx.outside_file("secret", b"outside secret");
    fx.user_symlink("abs", &secret);
    fx.user_symlink("rel", "../outside/secret");
    fx.user_symlink("dir", &fx.outside);
    fx.user_symlink("reldir", "../outside");
    fx.user_symlink("shadow", "/etc/shadow");
    fx.user_dir("sub", 0o755);
    fx.user_symlink("sub/up", "../../outside/secret");

    for path in [
        "abs",
        "rel",
        "dir/secret",
        "reldir/secret",
        "shadow",
        "sub/up",
    ] {
        let (data, answer) = read(&fx, path);
        let message = assert_failed(&answer, FileErrorKind::OutsideHome);
        assert!(message.contains(path), "{message}");
        assert!(data.is_empty());
    }
    for path in ["dir", "reldir"] {
        assert_failed(&list(&fx, path), FileErrorKind::OutsideHome);
    }
    // Writing through a symlinked parent, or creating directories beneath one.
    for path in [
        "dir/new",
        "reldir/new",
        "dir/secret",
        "dir/sub/new",
        "reldir/a/b/c",
    ] {
        assert_failed(
            &write(&fx, path, b"pwned", false),
            FileErrorKind::OutsideHome,
        );
    }
    assert_eq!(fx.outside_names(), ["secret"]);
    assert_eq!(fs::read(&secret).expect("read"), b"outside secret");

    // Writing at the link itself replaces the link, never its target.
    assert_done(&write(&fx, "abs", b"new", false), 3);
    assert_done(&write(&fx, "sub/up", b"new too", false), 7);
    for (path, content) in [("abs", &b"new"[..]), ("sub/up", b"new too")] {
        let path = fx.home.join(path);
        assert!(fs::symlink_metadata(&path).expect("stat").is_file());
        assert_eq!(fs::read(&path).expect("read"), content);
    }
    assert_eq!(fs::read(&secret).expect("read"), b"outside secret");
    assert_eq!(fx.outside_names(), ["secret"]);
    // The real /etc/shadow (if any) is untouched: the write replaced our link only.
    assert_done(&write(&fx, "shadow", b"x", false), 1);
}

#[test]
fn symlinks_within_home_are_followed() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fx.user_dir("real", 0o755);
    fx.user_file("real/file", b"inside");
    fx.user_symlink("link", "real/file");
    fx.user_symlink("dirlink", "real");
    fx.user_dir("deep", 0o755);
    fx.user_symlink("deep/back", "../real");

    assert_eq!(read(&fx, "link").0, b"inside");
    assert_eq!(read(&fx, "deep/back/file").0, b"inside");
    assert_done(&write(&fx, "dirlink/new", b"n", false), 1);
    assert_done(&write(&fx, "deep/back/made/here", b"h", false), 1);
    assert_eq!(fs::read(fx.home.join("real/new")).expect("read"), b"n");
    assert_eq!(
        fs::read(fx.home.join("real/made/here")).expect("read"),
        b"h"
    );
    match list(&fx, "dirlink") {
        GuestMessage::Listing { entries, .. } => {
            let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(names, ["file", "made", "new"]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_files_are_refused_without_blocking() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let fifo = CString::new(fx.home.join("fifo").as_os_str().as_bytes()).expect("path");
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    fx.user_dir("dir", 0o755);
    fx.user_file("dir/inner", b"x");
    fx.user_file("plain", b"x");

    // Run in a thread so that a blocking open fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let user = fx.user.clone();
    std::thread::spawn(move || {
        let mut host = Host::idle();
        let result = serve_read(&mut host, &user, "fifo");
        let _ = tx.send((result.is_ok(), host.out));
    });
    let (ok, out) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("reading a FIFO must not block");
    assert!(ok);
    assert_eq!(out.len(), 1);
    assert_failed(&out[0], FileErrorKind::NotAFile);

    assert_failed(&read(&fx, "dir").1, FileErrorKind::NotAFile);
    assert_failed(&write(&fx, "dir", b"x", false), FileErrorKind::NotAFile);
    assert_eq!(fs::read(fx.home.join("dir/inner")).expect("read"), b"x");
    assert_failed(
        &write(&fx, "plain/below", b"x", false),
        FileErrorKind::NotADirectory,
    );
    assert_failed(&read(&fx, "plain/below").1, FileErrorKind::NotADirectory);
    assert_failed(&list(&fx, "plain"), FileErrorKind::NotADirectory);
    assert_eq!(temp_files_in(&fx.home), Vec::<String>::new());
}

#[test]
fn missing_paths_are_not_found() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fx.user_symlink("dangling", "nowhere/at/all");
    let (data, answer) = read(&fx, "nope");
    assert!(data.is_empty());
    let message = assert_failed(&answer, FileErrorKind::NotFound);
    assert!(message.contains("\"nope\""), "{message}");
    assert_failed(&read(&fx, "no/dir/x").1, FileErrorKind::NotFound);
    assert_failed(&read(&fx, "dangling").1, FileErrorKind::NotFound);
    assert_failed(&list(&fx, "nope"), FileErrorKind::NotFound);
    assert_failed(&list(&fx, "dangling"), FileErrorKind::NotFound);
    // A parent that is a dangling symlink is not silently turned into a directory.
    assert_failed(
        &write(&fx, "dangling/x", b"x", false),
        FileErrorKind::NotFound,
    );
    assert!(!fx.home.join("nowhere").exists());
}

#[test]
fn listing_describes_entries_without_following_links() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fx.user_file("b-file.txt", b"hello");
    fx.user_dir("a-dir", 0o750);
    fx.user_file("a-dir/inner", b"x");
    fx.user_symlink("c-link", "a-dir");
    fx.user_symlink("d-out", &fx.outside);
    let entries = match list(&fx, "") {
        GuestMessage::Listing { entries, truncated } => {
            assert!(!truncated);
            entries
        }
        other => panic!("{other:?}"),
    };
    let mtime = |rel: &str| {
        fs::symlink_metadata(fx.home.join(rel))
            .expect("stat")
            .mtime()
    };
    let expected = [
        FileEntry {
            name: "a-dir".into(),
            kind: FileKind::Directory,
            size: fs::metadata(fx.home.join("a-dir")).expect("stat").len(),
            mode: 0o750,
            modified: mtime("a-dir"),
        },
        FileEntry {
            name: "b-file.txt".into(),
            kind: FileKind::File,
            size: 5,
            mode: 0o644,
            modified: mtime("b-file.txt"),
        },
        FileEntry {
            name: "c-link".into(),
            kind: FileKind::Symlink,
            size: 5,
            mode: 0o777,
            modified: mtime("c-link"),
        },
        FileEntry {
            name: "d-out".into(),
            kind: FileKind::Symlink,
            size: fx.outside.as_os_str().len() as u64,
            mode: 0o777,
            modified: mtime("d-out"),
        },
    ];
    assert_eq!(entries, expected);
    match list(&fx, "c-link") {
        GuestMessage::Listing { entries, truncated } => {
            assert!(!truncated);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].name, "inner");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn listing_is_capped() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fx.user_dir("many", 0o755);
    let total = MAX_LISTING + 5;
    // Created in reverse so the kept entries are not simply the first ones written.
    for i in (0..total).rev() {
        fs::write(fx.home.join(format!("many/{i:06}")), b"").expect("create");
    }
    match list(&fx, "many") {
        GuestMessage::Listing { entries, truncated } => {
            assert!(truncated);
            assert_eq!(entries.len(), MAX_LISTING);
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.name, format!("{i:06}"));
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn losing_the_channel_mid_read_stops_the_worker() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    fx.user_file("f", &Pattern::bytes(5, 20 * MAX_CHUNK));
    let mut host = Host::idle();
    host.fail_at_chunk = Some(2);
    let started = Instant::now();
    assert!(serve_read(&mut host, &fx.user, "f").is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(host.answers().is_empty());
}

/// The user's code swaps a directory on the path for a symlink out of home, again and again,
/// while we read, write and list through it. Whatever interleaving happens, nothing outside
/// is read or written.
#[test]
fn racing_symlink_swaps_cannot_lead_out() {
    if !is_root() {
        return;
    }
    let fx = Fixture::new();
    let outside_f = fx.outside_file("f", b"OUTSIDE");
    fx.user_dir("sw", 0o755);
    fx.user_file("sw/f", b"inside");
    // Relative, so that only the beneath-home rule (not the mount rule, which may catch an
    // absolute link's jump to `/`) stands between the walk and the outside.
    fx.user_symlink("alt", "../outside");
    let stop = Arc::new(AtomicBool::new(false));
    // Stops the swapper even when an assertion fails, so the fixture can be removed.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop_guard = StopOnDrop(Arc::clone(&stop));
    let swapper = {
        let stop = Arc::clone(&stop);
        let home = CString::new(fx.home.as_os_str().as_bytes()).expect("path");
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: valid C strings; an atomic exchange of two names in home.
                let ret = unsafe {
                    let dir = libc::open(home.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
                    let r = libc::renameat2(
                        dir,
                        c"sw".as_ptr(),
                        dir,
                        c"alt".as_ptr(),
                        libc::RENAME_EXCHANGE,
                    );
                    libc::close(dir);
                    r
                };
                assert_eq!(ret, 0, "swap: {}", io::Error::last_os_error());
                swaps += 1;
            }
            swaps
        })
    };
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    while Instant::now() < deadline {
        let (data, answer) = read(&fx, "sw/f");
        assert_ne!(data, b"OUTSIDE");
        let w = write(&fx, "sw/f", b"inside", false);
        let w2 = write(&fx, "sw/made/x", b"inside", false);
        let l = list(&fx, "sw");
        for msg in [&answer, &w, &w2, &l] {
            let key = match msg {
                GuestMessage::FileFailed { kind, .. } => format!("{kind:?}"),
                GuestMessage::FileDone { .. } => "done".into(),
                GuestMessage::Listing { entries, .. } => {
                    assert!(entries.iter().all(|e| e.name != "f" || e.size == 6));
                    "listing".into()
                }
                other => panic!("{other:?}"),
            };
            *outcomes.entry(key).or_default() += 1;
        }
    }
    drop(stop_guard);
    let swaps = swapper.join().expect("swapper");
    eprintln!("{swaps} swaps; outcomes {outcomes:?}");
    assert_eq!(fx.outside_names(), ["f"]);
    assert_eq!(fs::read(&outside_f).expect("read"), b"OUTSIDE");
    for kind in outcomes.keys() {
        assert!(
            ["done", "listing", "OutsideHome", "NotFound"].contains(&kind.as_str()),
            "unexpected outcome {kind}"
        );
    }
}
