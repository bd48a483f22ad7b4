//! A tiny host-side client for trying the agent in a hand-started VM:
//!
//! ```text
//! cargo run --example client -p guest-agent -- /tmp/a.sock raw 'echo hi' python 'print(1)'
//! ```
//!
//! Connects to QEMU's chardev socket, waits for `Ready`, runs each (language, code) pair in
//! turn and prints every message it gets back.

use protocol::{encode, ExecRequest, FrameDecoder, GuestMessage, HostMessage, Language};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, pairs) = args
        .split_first()
        .ok_or("usage: client SOCKET [LANG CODE]...")?;
    let start = Instant::now();
    let mut sock = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut dec = FrameDecoder::new();
    let ready = next(&mut sock, &mut dec)?;
    println!("{:>7.3}s {ready:?}", start.elapsed().as_secs_f64());
    for pair in pairs.chunks(2) {
        let [lang, code] = pair else {
            return Err("LANG without CODE".into());
        };
        let language = Language::from_name(lang).ok_or("unknown language")?;
        let unix_time_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let req = ExecRequest {
            language,
            code: code.clone(),
            env: vec![],
            timeout_ms: 5_000,
            stdout_cap: 1 << 20,
            stderr_cap: 100 << 10,
            unix_time_ms,
            extension: None,
            entropy: vec![0x5a; 32],
            persistent: std::env::var_os("PERSISTENT").is_some(),
        };
        let sent = Instant::now();
        sock.write_all(&encode(&HostMessage::Exec(req))?)?;
        loop {
            let msg = next(&mut sock, &mut dec)?;
            match &msg {
                GuestMessage::Output { stream, data } => {
                    println!(
                        "{:>7.3}s {stream:?} {:?}",
                        sent.elapsed().as_secs_f64(),
                        String::from_utf8_lossy(data)
                    )
                }
                other => println!("{:>7.3}s {other:?}", sent.elapsed().as_secs_f64()),
            }
            if matches!(
                msg,
                GuestMessage::Completed(_) | GuestMessage::Failed { .. }
            ) {
                break;
            }
        }
    }
    Ok(())
}

fn next(
    sock: &mut UnixStream,
    dec: &mut FrameDecoder,
) -> Result<GuestMessage, Box<dyn std::error::Error>> {
    let mut buf = [0u8; 65536];
    loop {
        if let Some(msg) = dec.next_frame()? {
            return Ok(msg);
        }
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err("guest closed the channel".into());
        }
        dec.push(&buf[..n]);
    }
}
