//! A fault-injecting TCP proxy: the network between the shop and PostgreSQL, the broker
//! and the providers, with a hand on the switch.
//!
//! Why a proxy and not network namespaces with `tc netem`/`iptables`: namespaces need
//! `CAP_NET_ADMIN` and a kernel with the netem module, which neither CI nor a developer's
//! laptop can be assumed to give; a proxy in the drill's own process runs anywhere the
//! drill does, and its faults switch on and off at exact moments the report can name.
//! What it cannot do — reorder or drop individual packets inside one connection — TCP
//! would hide from the application anyway (it retransmits); what the application does see
//! is modelled:
//!
//! - [`LinkFault::Latency`]: every chunk waits before it is forwarded (both directions);
//! - [`LinkFault::Blackhole`]: nothing moves, new connections are accepted but go nowhere —
//!   a partition as TCP shows it: bytes are held, not lost, and flow again at the heal
//!   unless a timeout on either side gave up first;
//! - [`LinkFault::OneWay`]: one direction is held (requests arrive, answers never do, or
//!   the reverse) — the asymmetric partition that makes "did it happen?" ambiguous;
//! - [`FaultProxy::reset`]: every open connection is closed at once (a middlebox or the
//!   peer restarting) — the clients must reconnect.
//!
//! A connection opened while no fault is on goes straight through; the pumps check the
//! fault before every read, so a fault applies to connections already open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which way bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From the client (the shop) to the upstream (PostgreSQL, the broker, a provider).
    ToUpstream,
    /// From the upstream back to the client.
    ToClient,
}

/// What the link does while a fault is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkFault {
    /// Every chunk is delayed by this much, both ways.
    Latency(Duration),
    /// Nothing moves either way; new connections hang.
    Blackhole,
    /// Bytes going this way are held.
    OneWay(Direction),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LinkState {
    fault: Option<LinkFault>,
    /// Bumped by [`FaultProxy::reset`]: a pump that sees it change closes its connection.
    resets: u64,
}

/// One proxied link: listens on `listen`, forwards to `upstream`.
#[derive(Debug)]
pub struct FaultProxy {
    name: String,
    listen: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<LinkState>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds `listen` and starts forwarding to `upstream`.
    ///
    /// # Errors
    /// The listen address cannot be bound.
    pub async fn start(
        name: impl Into<String>,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let listen = listener.local_addr()?;
        let (state, watcher) = watch::channel(LinkState {
            fault: None,
            resets: 0,
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, watcher));
        Ok(FaultProxy {
            name: name.into(),
            listen,
            upstream,
            state,
            accept,
        })
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where clients connect.
    #[must_use]
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    #[must_use]
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Turns a fault on (replacing any other) or, with `None`, heals the link.
    pub fn set(&self, fault: Option<LinkFault>) {
        self.state.send_modify(|state| state.fault = fault);
    }

    /// The fault now on the link.
    #[must_use]
    pub fn fault(&self) -> Option<LinkFault> {
        self.state.borrow().fault
    }

    /// Closes every connection open now; later ones go through as the fault allows.
    pub fn reset(&self) {
        self.state.send_modify(|state| state.resets += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Closes the open connections too: their pumps watch the state.
        self.reset();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    watcher: watch::Receiver<LinkState>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, upstream, watcher.clone()));
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut watcher: watch::Receiver<LinkState>,
) {
    let born = watcher.borrow().resets;
    // A black-holed link accepts (the kernel did already) but connects nowhere until healed.
    if !wait_until_open(&mut watcher, born, None).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        // The upstream is down: the client sees its connection closed, as it would see a
        // refusal through a real network path.
        return;
    };
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = tokio::spawn(pump(
        client_read,
        server_write,
        Direction::ToUpstream,
        watcher.clone(),
        born,
    ));
    let down = tokio::spawn(pump(
        server_read,
        client_write,
        Direction::ToClient,
        watcher,
        born,
    ));
    // Either side closing ends the connection: the other pump would only hold a
    // half-open socket.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Waits while the link holds bytes going `direction` (`None`: any direction, i.e. a
/// black hole). Returns `false` if the connection was reset meanwhile.
async fn wait_until_open(
    watcher: &mut watch::Receiver<LinkState>,
    born: u64,
    direction: Option<Direction>,
) -> bool {
    loop {
        let state = *watcher.borrow_and_update();
        if state.resets != born {
            return false;
        }
        let held = match state.fault {
            Some(LinkFault::Blackhole) => true,
            Some(LinkFault::OneWay(held)) => direction == Some(held),
            Some(LinkFault::Latency(_)) | None => false,
        };
        if !held {
            return true;
        }
        if watcher.changed().await.is_err() {
            return false;
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    direction: Direction,
    mut watcher: watch::Receiver<LinkState>,
    born: u64,
) {
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        if !wait_until_open(&mut watcher, born, Some(direction)).await {
            return;
        }
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = reset_of(&mut watcher, born) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A fault switched on while the read waited applies to what it brought.
        if !wait_until_open(&mut watcher, born, Some(direction)).await {
            return;
        }
        let delay = match watcher.borrow().fault {
            Some(LinkFault::Latency(delay)) => Some(delay),
            _ => None,
        };
        if let Some(delay) = delay {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = reset_of(&mut watcher, born) => return,
            }
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Resolves when the connection born at reset count `born` has been reset.
async fn reset_of(watcher: &mut watch::Receiver<LinkState>, born: u64) {
    loop {
        if watcher.borrow_and_update().resets != born {
            return;
        }
        if watcher.changed().await.is_err() {
            // The proxy is gone: treat as a reset.
            return;
        }
    }
}

/// A handle shared by the drill's scheduler: the proxies by link.
pub type SharedProxy = Arc<FaultProxy>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that answers every chunk with the same bytes.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0_u8; 1024];
                    loop {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        address
    }

    async fn proxy() -> FaultProxy {
        let upstream = echo_server().await;
        FaultProxy::start("echo", "127.0.0.1:0".parse().unwrap(), upstream)
            .await
            .unwrap()
    }

    async fn round_trip(socket: &mut TcpStream, text: &[u8], within: Duration) -> Option<Vec<u8>> {
        socket.write_all(text).await.ok()?;
        let mut answer = vec![0_u8; text.len()];
        match tokio::time::timeout(within, socket.read_exact(&mut answer)).await {
            Ok(Ok(_)) => Some(answer),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_when_healthy() {
        let proxy = proxy().await;
        let mut socket = TcpStream::connect(proxy.listen()).await.unwrap();
        let answer = round_trip(&mut socket, b"ping", Duration::from_secs(5)).await;
        assert_eq!(answer.as_deref(), Some(&b"ping"[..]));
    }

    #[tokio::test]
    async fn a_black_hole_holds_bytes_and_the_heal_delivers_them() {
        let proxy = proxy().await;
        let mut socket = TcpStream::connect(proxy.listen()).await.unwrap();
        assert!(
            round_trip(&mut socket, b"a", Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.set(Some(LinkFault::Blackhole));
        assert_eq!(
            round_trip(&mut socket, b"held", Duration::from_millis(300)).await,
            None,
            "nothing crosses a black hole"
        );
        proxy.set(None);
        let mut answer = [0_u8; 4];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut answer))
            .await
            .expect("the held bytes arrive after the heal")
            .unwrap();
        assert_eq!(&answer, b"held");
    }

    #[tokio::test]
    async fn one_way_loss_lets_requests_in_and_holds_answers() {
        let upstream_seen = Arc::new(tokio::sync::Notify::new());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let seen = upstream_seen.clone();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buffer = [0_u8; 3];
            socket.read_exact(&mut buffer).await.unwrap();
            seen.notify_one();
            socket.write_all(b"ack").await.unwrap();
            // Keep the socket open until the test ends.
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let proxy = FaultProxy::start("one-way", "127.0.0.1:0".parse().unwrap(), upstream)
            .await
            .unwrap();
        let mut socket = TcpStream::connect(proxy.listen()).await.unwrap();
        proxy.set(Some(LinkFault::OneWay(Direction::ToClient)));
        socket.write_all(b"req").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), upstream_seen.notified())
            .await
            .expect("the request reaches the upstream");
        let mut answer = [0_u8; 3];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), socket.read_exact(&mut answer))
                .await
                .is_err(),
            "the answer is held"
        );
        proxy.set(None);
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut answer))
            .await
            .expect("the answer arrives after the heal")
            .unwrap();
        assert_eq!(&answer, b"ack");
    }

    #[tokio::test]
    async fn latency_delays_each_chunk() {
        let proxy = proxy().await;
        let mut socket = TcpStream::connect(proxy.listen()).await.unwrap();
        proxy.set(Some(LinkFault::Latency(Duration::from_millis(150))));
        let started = tokio::time::Instant::now();
        assert!(
            round_trip(&mut socket, b"slow", Duration::from_secs(5))
                .await
                .is_some()
        );
        // One delay each way.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn reset_closes_open_connections_and_new_ones_work() {
        let proxy = proxy().await;
        let mut old = TcpStream::connect(proxy.listen()).await.unwrap();
        assert!(
            round_trip(&mut old, b"x", Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.reset();
        let mut buffer = [0_u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), old.read(&mut buffer))
            .await
            .expect("the reset closes the connection");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let mut fresh = TcpStream::connect(proxy.listen()).await.unwrap();
        assert!(
            round_trip(&mut fresh, b"y", Duration::from_secs(5))
                .await
                .is_some()
        );
    }
}
