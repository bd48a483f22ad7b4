//! Hermetic network fixtures for exec-sandbox's network tests.
//!
//! The sandbox's per-VM network process enforces a domain allowlist, so testing it needs a DNS
//! server that answers for invented names and web servers behind those names. Reaching the real
//! internet would make the tests flaky and non-hermetic (and there is no internet in CI), so
//! [`Testnet::start`] brings up, on loopback addresses of this machine:
//!
//! - a DNS server (UDP and TCP) answering `A` queries for the configured names,
//! - per name, an HTTP server on `ip:80` and an HTTPS server on `ip:443`, each on its own
//!   loopback address so that the destination address alone identifies the name,
//! - a CA generated at start that signed the HTTPS certificate; its PEM is in
//!   [`Testnet::ca_pem`] so a client (or a guest) can be told to trust it.
//!
//! Addresses are drawn at random from 127.0.0.0/15 because the sandbox translates only that
//! range into the guest's view; a clash with another test process (EADDRINUSE) just draws again.
//! Everything each server saw is kept and readable ([`Testnet::queries`],
//! [`Testnet::requests`]) so tests can assert both what got through and what never arrived.
//!
//! The servers run on a runtime of their own, on a dedicated thread: a test may then block on
//! std sockets (or drive a current-thread runtime) without starving them, and dropping the
//! [`Testnet`] stops that runtime, which closes every socket before `drop` returns.

mod addr;
mod dns;
mod tls;
mod web;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// What to serve.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// One host (own loopback address, HTTP and HTTPS server, DNS `A` record) per name, e.g.
    /// `["allowed.test", "other.test"]`. Names are case-insensitive; a trailing dot is ignored.
    pub names: Vec<String>,
    /// Extra `A` records with no server behind them, e.g. `("private.test", 10.0.0.1)` to test
    /// that the sandbox refuses names resolving to private addresses. More can be added later
    /// with [`Testnet::add_record`].
    pub records: Vec<(String, Ipv4Addr)>,
}

impl Spec {
    /// A spec with one host per name and no extra records.
    pub fn names<I, S>(names: I) -> Spec
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Spec {
            names: names.into_iter().map(Into::into).collect(),
            records: Vec::new(),
        }
    }

    /// Adds an extra `A` record (builder style).
    pub fn record(mut self, name: impl Into<String>, ip: Ipv4Addr) -> Spec {
        self.records.push((name.into(), ip));
        self
    }
}

/// One served name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Normalised name (lowercase, no trailing dot).
    pub name: String,
    /// The loopback address the DNS server answers for `name` and both servers listen on.
    pub ip: Ipv4Addr,
    /// Always 80 today; kept as a field so tests do not hard-code it.
    pub http_port: u16,
    /// Always 443 today.
    pub https_port: u16,
}

/// What a client needs to use a running [`Testnet`]; also the JSON line `sbx-testnet` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub dns: SocketAddr,
    pub ca_pem: String,
    pub hosts: Vec<Host>,
}

/// One DNS question the server received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Normalised name asked for (lowercase, no trailing dot).
    pub name: String,
    /// Record type as DNS spells it: `"A"`, `"AAAA"`, ...
    pub qtype: String,
    /// `"udp"` or `"tcp"`.
    pub transport: String,
}

/// One HTTP request a web server answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `"http"` or `"https"`.
    pub server: String,
    /// Name of the host whose server answered (the one owning the address connected to).
    pub host: String,
    /// Local address the connection arrived on.
    pub ip: Ipv4Addr,
    /// Server name the TLS client presented; `None` over plain HTTP or when none was sent.
    pub sni: Option<String>,
    pub method: String,
    pub path: String,
    /// Value of the `Host` header, if any.
    pub host_header: Option<String>,
    /// Address of the client as this server saw it.
    pub peer: SocketAddr,
}

/// State shared between the servers and the [`Testnet`] handle.
#[derive(Debug, Default)]
struct Shared {
    /// Normalised name → address, for the configured hosts and the extra records.
    records: Mutex<HashMap<String, Ipv4Addr>>,
    queries: Mutex<Vec<Query>>,
    requests: Mutex<Vec<Request>>,
}

/// A panic in one server task must not hide what the others logged, so poisoning is ignored:
/// every critical section is a single push or insert that leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Running servers. Dropping it stops every server and frees every address.
pub struct Testnet {
    /// Address of the DNS server, listening on both UDP and TCP.
    pub dns: SocketAddr,
    /// One per name of the [`Spec`], in the same order.
    pub hosts: Vec<Host>,
    /// PEM of the CA that signed every server certificate.
    pub ca_pem: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Testnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Testnet")
            .field("dns", &self.dns)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// What the server thread reports once every socket is bound.
struct Ready {
    dns: SocketAddr,
    hosts: Vec<Host>,
    ca_pem: String,
}

type Launch = (
    oneshot::Receiver<anyhow::Result<Ready>>,
    oneshot::Sender<()>,
    JoinHandle<()>,
    Arc<Shared>,
);

impl Testnet {
    /// Binds every server and returns once all of them accept connections.
    ///
    /// Needs privileges to bind ports 80, 443 and 53 (tests run as root).
    pub async fn start(spec: Spec) -> anyhow::Result<Testnet> {
        let (ready, stop, thread, shared) = launch(spec)?;
        let ready = ready.await;
        Testnet::finish(ready, stop, thread, shared)
    }

    /// [`Testnet::start`] for callers without an async runtime (e.g. black-box CLI tests).
    /// Must not be called from inside an async context.
    pub fn start_blocking(spec: Spec) -> anyhow::Result<Testnet> {
        let (ready, stop, thread, shared) = launch(spec)?;
        let ready = ready.blocking_recv();
        Testnet::finish(ready, stop, thread, shared)
    }

    fn finish(
        ready: Result<anyhow::Result<Ready>, oneshot::error::RecvError>,
        stop: oneshot::Sender<()>,
        thread: JoinHandle<()>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Testnet> {
        match ready {
            Ok(Ok(ready)) => Ok(Testnet {
                dns: ready.dns,
                hosts: ready.hosts,
                ca_pem: ready.ca_pem,
                shared,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // The thread dropped the sender without a word: it panicked.
            Err(_) => {
                let _ = thread.join();
                bail!("testnet server thread died during start")
            }
        }
    }

    /// The host serving `name` (case-insensitive).
    ///
    /// # Panics
    /// If `name` was not in the [`Spec`]: that is a bug in the test, not an environment failure.
    pub fn host(&self, name: &str) -> &Host {
        let wanted = normalise(name);
        self.hosts
            .iter()
            .find(|h| h.name == wanted)
            .unwrap_or_else(|| panic!("testnet serves no host named {name:?}"))
    }

    /// Adds (or replaces) an `A` record; answered from the next query on. No server is started
    /// for it. Panics on an invalid name, as [`Testnet::host`] does on an unknown one.
    pub fn add_record(&self, name: &str, ip: Ipv4Addr) {
        let name = normalise(name);
        if let Err(e) = check_name(&name) {
            panic!("{e:#}");
        }
        lock(&self.shared.records).insert(name, ip);
    }

    /// Every DNS question received so far, in arrival order.
    pub fn queries(&self) -> Vec<Query> {
        lock(&self.shared.queries).clone()
    }

    /// Every HTTP(S) request answered so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.requests).clone()
    }

    /// The addresses and CA, in the shape `sbx-testnet` prints.
    pub fn info(&self) -> Info {
        Info {
            dns: self.dns,
            ca_pem: self.ca_pem.clone(),
            hosts: self.hosts.clone(),
        }
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Joining means the runtime, and with it every socket, is gone when drop returns, so
        // a test can rely on the addresses being free (or connections being refused) after it.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Lowercase, without the trailing dot: the form names are stored and logged in.
fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Rejects what cannot be both a DNS name and a certificate SAN, so mistakes surface at start
/// rather than as a confusing TLS or DNS failure mid-test.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        bail!("invalid DNS name {name:?}");
    }
    Ok(())
}

/// Validates the spec, then starts the server thread, which binds everything and reports back.
fn launch(spec: Spec) -> anyhow::Result<Launch> {
    let mut names = Vec::new();
    let mut seen = HashSet::new();
    for name in &spec.names {
        let name = normalise(name);
        check_name(&name)?;
        if !seen.insert(name.clone()) {
            bail!("name {name:?} is listed twice");
        }
        names.push(name);
    }
    let mut extra = Vec::new();
    for (name, ip) in &spec.records {
        let name = normalise(name);
        check_name(&name)?;
        if seen.contains(&name) {
            bail!("{name:?} is both a served name and an extra record");
        }
        extra.push((name, *ip));
    }

    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("testnet".into())
        .spawn(move || {
            // A current-thread runtime is plenty for a handful of test connections, and the
            // machine is small.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::new(e).context("tokio runtime")));
                    return;
                }
            };
            rt.block_on(async move {
                match serve(names, extra, thread_shared).await {
                    Ok(ready) => {
                        if ready_tx.send(Ok(ready)).is_err() {
                            return; // nobody is waiting any more
                        }
                        // Either a stop or the handle vanishing (sender dropped) ends the run.
                        let _ = stop_rx.await;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            });
            // Dropping the runtime here drops every server task and so closes every socket.
            drop(rt);
        })
        .context("spawning the testnet thread")?;
    Ok((ready_rx, stop_tx, thread, shared))
}

/// Binds every server on the current runtime and spawns their tasks.
async fn serve(
    names: Vec<String>,
    extra: Vec<(String, Ipv4Addr)>,
    shared: Arc<Shared>,
) -> anyhow::Result<Ready> {
    let mut taken = HashSet::new();
    let dns = addr::bind_dns(&mut taken).await?;
    let mut listeners = Vec::new();
    for name in &names {
        let (ip, http, https) = addr::bind_web(&mut taken)
            .await
            .with_context(|| format!("binding the servers for {name}"))?;
        listeners.push((name.clone(), ip, http, https));
    }

    let san: Vec<String> = names
        .iter()
        .cloned()
        .chain(listeners.iter().map(|l| l.1.to_string()))
        .collect();
    let tls = tls::Material::generate(san)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config()?);

    {
        let mut records = lock(&shared.records);
        for (name, ip, _, _) in &listeners {
            records.insert(name.clone(), *ip);
        }
        records.extend(extra);
    }

    let dns_addr = dns.addr;
    tokio::spawn(dns::run(dns, shared.clone()));
    let mut hosts = Vec::new();
    for (name, ip, http, https) in listeners {
        hosts.push(Host {
            name: name.clone(),
            ip,
            http_port: addr::HTTP_PORT,
            https_port: addr::HTTPS_PORT,
        });
        let host: Arc<str> = name.into();
        tokio::spawn(web::run_http(http, host.clone(), ip, shared.clone()));
        tokio::spawn(web::run_https(
            https,
            acceptor.clone(),
            host,
            ip,
            shared.clone(),
        ));
    }
    Ok(Ready {
        dns: dns_addr,
        hosts,
        ca_pem: tls.ca_pem,
    })
}
