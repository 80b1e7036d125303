//! Published ports: a create request's `ports` (TCP ports inside the sandbox) each get a host
//! port of `PORT_RANGE` on `SANDBOXD_PUBLISH_HOST`, whose connections are forwarded into the
//! sandbox through tunnels ([`Manager::connect_port`], the guest agent's `Connect`), so the
//! same on every backend.
//!
//! - **Allocation** ([`Ports::reserve`]): binding is the allocation. The candidates of the range
//!   are tried from a cursor that moves on after each allocation (a port just given back is
//!   the last to be handed out again), and a port that cannot be bound (used by anything on
//!   the machine, another server process included) is skipped. The listeners are bound before
//!   the sandbox is created and dropped if the create fails, so nothing leaks; a range without
//!   enough free ports is `503 unavailable`.
//! - **Forwarding**: one task per published port accepts connections and owns their
//!   forwarding tasks (`copy_bidirectional` between the TCP connection and a tunnel, so
//!   half-closes pass both ways); a connection whose tunnel cannot be opened (nothing listens
//!   inside, the sandbox is paused) is closed at once.
//! - **Release** ([`Ports::release`]): aborting a sandbox's tasks closes its listeners (and
//!   connections); it returns once they are closed. The v1 delete does it before answering;
//!   every other end of a sandbox (expiry, recycle, a delete by another process, an error) is
//!   found by [`Ports::reconcile`], which runs every second and releases the ports of sandboxes
//!   that are no longer running or paused.
//! - **Adoption**: with the state in Redis, records may list ports whose listener died with
//!   another process of this node (a worker that crashed, a server restarted with
//!   `AUTO_CLEANUP=false`): [`Ports::reconcile`] binds them again when it can (nobody holds
//!   them) and forwards them here. Not for a shared backend's sandboxes, which belong to no
//!   node.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sandboxd_core::Manager;
use sandboxd_types::{ErrorCode, PublishedPort, SandboxState};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::error::ApiError;

/// How often [`Ports::reconcile`] runs.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// `PORT_RANGE`: the host ports published ports are taken from, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The lowest port.
    pub lo: u16,
    /// The highest port.
    pub hi: u16,
}

impl Default for PortRange {
    /// AgentScope Runtime's default, `[49152,59152]`.
    fn default() -> Self {
        PortRange {
            lo: 49152,
            hi: 59152,
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{},{}]", self.lo, self.hi)
    }
}

impl PortRange {
    /// Parse AgentScope's form `[LOW,HIGH]` (a JSON list of two ports, both included). Ports
    /// below 1024 are refused: binding them needs privileges, and they belong to the machine's
    /// services.
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let shape = "expected [LOW,HIGH], e.g. [49152,59152]";
        let ends: Vec<i64> = serde_json::from_str(s.trim()).map_err(|_| shape.to_string())?;
        let [lo, hi] = ends[..] else {
            return Err(format!("{shape}: two ports, not {}", ends.len()));
        };
        for p in [lo, hi] {
            if !(1..=65535).contains(&p) {
                return Err(format!("{p} is not a port (1-65535)"));
            }
            if p < 1024 {
                return Err(format!(
                    "{p} is a privileged port; the range must lie within 1024-65535"
                ));
            }
        }
        if lo > hi {
            return Err(format!("the low end {lo} is above the high end {hi}"));
        }
        Ok(PortRange {
            lo: lo as u16,
            hi: hi as u16,
        })
    }

    /// How many ports it holds.
    pub fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }

    /// Never: a range holds one port at least.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`-th port, wrapping around.
    fn nth(&self, i: usize) -> u16 {
        self.lo + (i % self.len()) as u16
    }
}

/// Host listeners bound for a sandbox that is being created ([`Ports::reserve`]); dropping them
/// gives the ports back.
#[derive(Debug, Default)]
pub struct Reserved {
    listeners: Vec<(u16, TcpListener)>,
    /// What the sandbox's record lists.
    pub info: Vec<PublishedPort>,
}

/// The published ports of this process.
#[derive(Debug)]
pub struct Ports {
    range: PortRange,
    bind: IpAddr,
    /// The host part of each published port's `address`.
    advertise: IpOrName,
    cursor: AtomicUsize,
    /// Whether records of other processes may list ports to take over (the state is shared).
    adopt: bool,
    /// Each sandbox's forwarding tasks (one per published port), by sandbox id. Changed only
    /// under the lock, which [`Ports::reconcile`] holds for a whole pass.
    published: tokio::sync::Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
}

/// A host to show in addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IpOrName {
    Ip(IpAddr),
    Name(String),
}

impl Ports {
    /// Publish ports of `range` on `bind`, showing them at `advertise` (`bind` itself unless it
    /// is the unspecified address, for which the caller names a host clients can use). With
    /// `adopt`, [`Ports::reconcile`] takes over ports that other processes of this node
    /// published and no longer serve.
    pub fn new(range: PortRange, bind: IpAddr, advertise: &str, adopt: bool) -> Ports {
        let advertise = match advertise.parse::<IpAddr>() {
            Ok(ip) => IpOrName::Ip(ip),
            Err(_) => IpOrName::Name(advertise.to_string()),
        };
        Ports {
            range,
            bind,
            advertise,
            cursor: AtomicUsize::new(0),
            adopt,
            published: Default::default(),
        }
    }

    /// The range ports are taken from.
    pub fn range(&self) -> PortRange {
        self.range
    }

    fn info(&self, port: u16, host_port: u16) -> PublishedPort {
        let address = match &self.advertise {
            IpOrName::Ip(ip) => SocketAddr::new(*ip, host_port).to_string(),
            IpOrName::Name(n) => format!("{n}:{host_port}"),
        };
        PublishedPort {
            port,
            host_port,
            address,
        }
    }

    /// Bind one host listener.
    fn bind(&self, host_port: u16) -> std::io::Result<TcpListener> {
        let l = std::net::TcpListener::bind(SocketAddr::new(self.bind, host_port))?;
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    }

    /// Bind a free host port of the range for each of `ports` (ports inside the sandbox, already
    /// checked). Fails with `unavailable` (503) when the range has too few free ports; nothing
    /// stays bound then.
    pub fn reserve(&self, ports: &[u16]) -> Result<Reserved, ApiError> {
        let mut out = Reserved::default();
        if ports.is_empty() {
            return Ok(out);
        }
        let n = self.range.len();
        let start = self.cursor.load(Ordering::Relaxed);
        let mut tried = 0;
        while out.listeners.len() < ports.len() && tried < n {
            let host_port = self.range.nth(start + tried);
            tried += 1;
            match self.bind(host_port) {
                Ok(l) => {
                    let port = ports[out.listeners.len()];
                    out.info.push(self.info(port, host_port));
                    out.listeners.push((port, l));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                    ) => {}
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "cannot bind a published port on {}:{host_port}: {e}",
                        self.bind
                    )))
                }
            }
        }
        if out.listeners.len() < ports.len() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "no free host port left for {} published port(s): PORT_RANGE {} has {} \
                     free (all others are in use)",
                    ports.len(),
                    self.range,
                    out.listeners.len()
                ),
            ));
        }
        self.cursor.store((start + tried) % n, Ordering::Relaxed);
        Ok(out)
    }

    /// Start forwarding the listeners of `reserved` into sandbox `id`.
    pub async fn serve(&self, manager: &Arc<Manager>, id: &str, reserved: Reserved) {
        if reserved.listeners.is_empty() {
            return;
        }
        let tasks = reserved
            .listeners
            .into_iter()
            .map(|(port, l)| tokio::spawn(forward_port(l, manager.clone(), id.to_string(), port)))
            .collect();
        if let Some(old) = self.published.lock().await.insert(id.to_string(), tasks) {
            stop(old).await;
        }
    }

    /// Close the listeners (and connections) of sandbox `id`'s published ports; their ports
    /// are free when this returns.
    pub async fn release(&self, id: &str) {
        let tasks = self.published.lock().await.remove(id);
        if let Some(tasks) = tasks {
            stop(tasks).await;
            tracing::debug!(sandbox = %id, "published ports released");
        }
    }

    /// Close every published port of this process.
    pub async fn release_all(&self) {
        let all: Vec<_> = self.published.lock().await.drain().collect();
        for (_, tasks) in all {
            stop(tasks).await;
        }
    }

    /// Ids of the sandboxes whose ports this process forwards.
    pub async fn published(&self) -> Vec<String> {
        self.published.lock().await.keys().cloned().collect()
    }

    /// Release the ports of sandboxes that are no longer running or paused, and (with
    /// adoption) take over the ports of this node's sandboxes that nobody serves.
    pub async fn reconcile(&self, manager: &Arc<Manager>) {
        let mut published = self.published.lock().await;
        if published.is_empty() && !self.adopt {
            return;
        }
        let Ok(all) = manager.list_marking_own().await else {
            return;
        };
        let live =
            |state: SandboxState| matches!(state, SandboxState::Running | SandboxState::Paused);
        let alive: HashMap<&str, &sandboxd_types::Sandbox> = all
            .iter()
            .filter(|(sb, _)| live(sb.state))
            .map(|(sb, _)| (sb.id.as_str(), sb))
            .collect();
        let gone: Vec<String> = published
            .keys()
            .filter(|id| !alive.contains_key(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some(tasks) = published.remove(&id) {
                stop(tasks).await;
                tracing::debug!(sandbox = %id, "sandbox gone; its published ports are released");
            }
        }
        if !self.adopt || manager.backend_shared() {
            return;
        }
        for (sb, own) in &all {
            if !own || !live(sb.state) || sb.ports.is_empty() || published.contains_key(&sb.id) {
                continue;
            }
            // Held by the process that serves them (or by anything else): not ours to take.
            let Ok(listeners) = sb
                .ports
                .iter()
                .map(|p| self.bind(p.host_port).map(|l| (p.port, l)))
                .collect::<std::io::Result<Vec<_>>>()
            else {
                continue;
            };
            // It may have ended while the ports were bound.
            if !manager.get(&sb.id).await.is_ok_and(|now| live(now.state)) {
                continue;
            }
            tracing::info!(sandbox = %sb.id, ports = sb.ports.len(), "published ports taken over from a process that no longer serves them");
            let tasks = listeners
                .into_iter()
                .map(|(port, l)| {
                    tokio::spawn(forward_port(l, manager.clone(), sb.id.clone(), port))
                })
                .collect();
            published.insert(sb.id.clone(), tasks);
        }
    }

    /// Run [`Ports::reconcile`] every [`RECONCILE_EVERY`]; the caller aborts the task.
    pub fn spawn_reconciler(self: &Arc<Self>, manager: Arc<Manager>) -> JoinHandle<()> {
        let ports = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECONCILE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                ports.reconcile(&manager).await;
            }
        })
    }
}

/// Abort forwarding tasks and wait until they are gone (their listeners closed).
async fn stop(tasks: Vec<JoinHandle<()>>) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Accept connections on a published port and forward each into the sandbox. The
/// connections' tasks belong to this one: aborting it ends them all.
async fn forward_port(listener: TcpListener, manager: Arc<Manager>, id: String, port: u16) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(forward_conn(tcp, manager.clone(), id.clone(), port));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(sandbox = %id, port, error = %e, "published port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Forward one connection: a tunnel to the port inside, bytes both ways until both ends are
/// done. Without a tunnel the connection is closed at once.
async fn forward_conn(mut tcp: TcpStream, manager: Arc<Manager>, id: String, port: u16) {
    let _ = tcp.set_nodelay(true);
    match manager.connect_port(&id, port).await {
        Ok(mut tunnel) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut tcp, &mut tunnel).await {
                tracing::debug!(sandbox = %id, port, error = %e, "published port: connection ended with an error");
            }
        }
        Err(e) => {
            tracing::debug!(sandbox = %id, port, error = %e, "published port: no tunnel; closing the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_range_parses_agentscope_form() {
        assert_eq!(
            PortRange::parse("[49152,59152]").unwrap(),
            PortRange::default()
        );
        assert_eq!(
            PortRange::parse(" [ 2000 , 2000 ] ").unwrap(),
            PortRange { lo: 2000, hi: 2000 }
        );
        assert_eq!(PortRange::parse("[2000,2000]").unwrap().len(), 1);
        assert_eq!(PortRange::default().len(), 10001);
        for (bad, says) in [
            ("49152-59152", "expected [LOW,HIGH]"),
            ("[49152]", "two ports"),
            ("[1,2,3]", "two ports"),
            ("[\"a\",2]", "expected [LOW,HIGH]"),
            ("[6000,5000]", "the low end 6000 is above the high end 5000"),
            ("[80,9000]", "80 is a privileged port"),
            ("[0,9000]", "0 is not a port"),
            ("[9000,70000]", "70000 is not a port"),
            ("", "expected [LOW,HIGH]"),
        ] {
            let e = PortRange::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    /// A range of `n` ports on loopback that nothing else uses: a free run of ports found by
    /// binding them all (the test then holds none of them).
    fn free_range(n: u16) -> PortRange {
        'search: for lo in (20000..25000u16)
            .step_by(100)
            .map(|b| b + (std::process::id() % 50) as u16)
        {
            let mut held = Vec::new();
            for p in lo..lo + n {
                match std::net::TcpListener::bind(("127.0.0.1", p)) {
                    Ok(l) => held.push(l),
                    Err(_) => continue 'search,
                }
            }
            return PortRange { lo, hi: lo + n - 1 };
        }
        panic!("no free range of {n} ports");
    }

    fn ports(range: PortRange) -> Ports {
        Ports::new(range, "127.0.0.1".parse().unwrap(), "127.0.0.1", false)
    }

    #[tokio::test]
    async fn allocation_takes_free_ports_in_turn_and_refuses_when_the_range_is_full() {
        let range = free_range(3);
        let p = ports(range);
        let a = p.reserve(&[8000, 8001]).unwrap();
        let got: Vec<(u16, u16)> = a.info.iter().map(|i| (i.port, i.host_port)).collect();
        assert_eq!(got, vec![(8000, range.lo), (8001, range.lo + 1)]);
        assert_eq!(a.info[0].address, format!("127.0.0.1:{}", range.lo));
        // Two more do not fit in the one port left; nothing of the attempt stays bound.
        let e = p.reserve(&[1, 2]).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("has 1 free"), "{}", e.message);
        let b = p.reserve(&[9000]).unwrap();
        assert_eq!(b.info[0].host_port, range.hi);
        assert!(p.reserve(&[9001]).is_err());
        // Given back, a port is handed out again (the cursor wraps around).
        drop(a);
        let c = p.reserve(&[7000]).unwrap();
        assert_eq!(c.info[0].host_port, range.lo);
        // A port held by someone else is skipped.
        drop((b, c));
        let _other = std::net::TcpListener::bind(("127.0.0.1", range.lo + 1)).unwrap();
        let d = p.reserve(&[1, 2]).unwrap();
        let hosts: Vec<u16> = d.info.iter().map(|i| i.host_port).collect();
        assert!(!hosts.contains(&(range.lo + 1)), "{hosts:?}");
        assert!(p.reserve(&[]).unwrap().info.is_empty());
    }

    #[test]
    fn addresses_show_the_advertised_host() {
        let r = PortRange::default();
        let v6 = Ports::new(r, "::1".parse().unwrap(), "::1", false);
        assert_eq!(v6.info(80, 50000).address, "[::1]:50000");
        let named = Ports::new(r, "0.0.0.0".parse().unwrap(), "node-a.example", false);
        assert_eq!(named.info(80, 50000).address, "node-a.example:50000");
    }
}
