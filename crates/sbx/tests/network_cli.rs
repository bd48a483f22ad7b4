//! The network flags of the built `sbx` binary, black-box: `--expose` with a guest web
//! server that starts late, the default of no interface, usage errors, and an allowlisted
//! HTTPS fetch against the test's own DNS and HTTPS servers (`testnet`), with the JSON
//! result carrying the ports and the network report.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Sbx;

fn http_get(port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    if out.is_empty() {
        return Err("closed without a response".into());
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Listens on 0.0.0.0:8000 after 3 s and ends after its first request (60 s at most).
const LATE_SERVER: &str = "import http.server, time\n\
time.sleep(3)\n\
served = []\n\
class H(http.server.SimpleHTTPRequestHandler):\n    def do_GET(self):\n        super().do_GET()\n        served.append(1)\n\
srv = http.server.ThreadingHTTPServer(('0.0.0.0', 8000), H)\n\
srv.timeout = 0.5\n\
end = time.time() + 60\n\
while not served and time.time() < end:\n    srv.handle_request()\n";

#[test]
fn expose_prints_the_url_at_once_and_the_server_answers_through_it() {
    let sbx = Sbx::new();
    let mut child = sbx.spawn(&["run", "--expose", "8000", "-t", "90", "-c", LATE_SERVER]);
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("sbx ended before printing the URL")
            .expect("stderr line");
        if let Some(rest) = line.strip_prefix("sbx: guest port 8000/tcp is at ") {
            break rest.to_string();
        }
    };
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("url {url}"));
    let started = Instant::now();
    let early = http_get(port);
    assert!(early.is_err(), "{early:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(5));
    let mut last = Err(String::new());
    for _ in 0..100 {
        last = http_get(port);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let body = last.unwrap_or_else(|e| panic!("after 5 s: {e}"));
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    // Drain stderr so sbx never blocks on it, then it ends by itself.
    std::thread::spawn(move || for _ in lines {});
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(sbx.leftover_processes().is_empty());
}

#[test]
fn without_network_flags_there_is_no_interface_but_loopback() {
    let sbx = Sbx::new();
    let (code, v, _) = sbx.run_json(&["-l", "raw", "ls /sys/class/net"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["stdout"], "lo\n");
    assert!(v.get("network").is_none(), "{v}");
}

#[test]
fn bad_network_flags_are_usage_errors_naming_the_flag() {
    let sbx = Sbx::new();
    for (args, needle) in [
        (vec!["--expose", "0"], "port 0"),
        (vec!["--expose", "http"], "--expose"),
        (vec!["--expose", "8000/sctp"], "tcp or udp"),
        (vec!["--expose", "80", "--expose", "80"], "twice"),
        (
            vec!["--network", "--allow-domain", "a.test"],
            "cannot be used with",
        ),
        (vec!["--allow-domain", "1.2.3.4"], "IP address"),
        (vec!["--allow-domain", "*.a.test"], "wildcard"),
        (vec!["--allow-range", "127.0.0.0/8"], "--allow-range"),
        (vec!["--network", "--allow-range", "fd00::/8"], "IPv6"),
    ] {
        let mut full = vec!["run"];
        full.extend(args.iter().copied());
        full.extend(["-c", "print(1)"]);
        let out = sbx.run(&full);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(sbx.leftover_processes().is_empty());
}

#[test]
fn an_allowlisted_https_fetch_works_and_the_json_reports_it() {
    let net =
        testnet::Testnet::start_blocking(testnet::Spec::names(["allowed.test", "other.test"]))
            .expect("testnet");
    let sbx = Sbx::new();
    let code = "import os, ssl, urllib.request\n\
ctx = ssl.create_default_context(cadata=os.environ['CA'].replace('|', '\\n'))\n\
print(urllib.request.urlopen('https://allowed.test/', context=ctx, timeout=20).read().decode().strip())\n\
try:\n    urllib.request.urlopen('https://other.test/', context=ctx, timeout=20)\n    print('other: reached')\n\
except Exception as e:\n    print('other: refused')\n";
    let dns = net.dns.to_string();
    let ca = format!("CA={}", net.ca_pem.replace('\n', "|"));
    let out = sbx
        .cmd()
        .env("SBX_DNS_UPSTREAM", &dns)
        .args([
            "run",
            "--json",
            "--allow-domain",
            "allowed.test",
            "--allow-range",
            "127.0.0.0/8",
            "--expose",
            "9000",
            "-e",
            &ca,
            "-t",
            "60",
            "-c",
            code,
        ])
        .output()
        .expect("sbx");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(
        v["stdout"], "hello from allowed.test over https\nother: refused\n",
        "{v}"
    );
    assert_eq!(v["exposed_ports"][0]["internal"], 9000, "{v}");
    assert_eq!(v["exposed_ports"][0]["host"], "127.0.0.1", "{v}");
    let dns = v["network"]["dns"].as_array().expect("dns events");
    assert!(
        dns.iter()
            .any(|d| d["name"] == "allowed.test" && d["allowed"] == true),
        "{v}"
    );
    assert!(
        dns.iter()
            .any(|d| d["name"] == "other.test" && d["allowed"] == false),
        "{v}"
    );
    let conns = v["network"]["connections"].as_array().expect("connections");
    assert!(
        conns
            .iter()
            .any(|c| c["name"] == "allowed.test" && c["allowed"] == true && c["port"] == 443),
        "{v}"
    );
    assert!(sbx.leftover_processes().is_empty());
}
