//! The embedded TURN server (RFC 8656 over UDP, and over TLS when it has a certificate), for
//! clients that cannot reach the media ports directly: the webrtc-rs `turn` crate speaks the protocol; this module decides who may use it
//! and for what.
//!
//! - **Credentials** are TURN REST style: the username is `expiry:identity` (Unix seconds), the
//!   password base64(HMAC-SHA1(secret, username)). Each participant gets its own in `joined`;
//!   an expired, forged or other participant's credential fails the message integrity.
//! - **No open relay**: an allocation may only reach this SFU's own media addresses. A
//!   CreatePermission or ChannelBind for any other peer is answered 403 before the TURN server
//!   sees it, and the relay socket sends nowhere else either.
//! - **Caps**: allocations per username and in all (486 past them), and a byte rate per
//!   allocation (datagrams past it are dropped, as a congested link would).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use stun::attributes::{ATTR_USERNAME, ATTR_XOR_PEER_ADDRESS};
use stun::error_code::{ErrorCode, ErrorCodeAttribute, CODE_ALLOC_QUOTA_REACHED, CODE_FORBIDDEN};
use stun::message::{
    Message, MessageType, Setter, CLASS_ERROR_RESPONSE, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc_util::Conn;

use crate::config::TurnConfig;
use crate::metrics::Metrics;
use crate::model::IceServer;

type TurnResult<T> = Result<T, ::turn::Error>;

/// The realm of the long-term credentials.
const REALM: &str = "sfu";

/// What the TURN server enforces, shared by its listener, relays and credential check.
struct Guard {
    /// The media addresses (advertised IP and worker port) allocations may send to.
    peers: HashSet<SocketAddr>,
    max_per_user: usize,
    max_total: usize,
    /// Bytes per second each allocation may relay, each way.
    max_bytes_per_second: u64,
    /// Live allocations per username.
    allocations: Mutex<HashMap<String, usize>>,
    /// Allocate requests passed to the TURN server, by transaction id: whose they are.
    pending: Mutex<HashMap<[u8; 12], (String, Instant)>>,
    metrics: Arc<Metrics>,
}

impl Guard {
    fn refuse(&self, reason: &str) {
        self.metrics
            .turn_refusals
            .with_label_values(&[reason])
            .inc();
    }

    fn peer_allowed(&self, ip: IpAddr) -> bool {
        self.peers.iter().any(|p| p.ip() == ip)
    }

    /// What to answer a client request instead of the TURN server, if anything.
    fn check(&self, m: &Message) -> Option<(ErrorCode, &'static str)> {
        if m.typ.class != CLASS_REQUEST {
            return None;
        }
        if m.typ.method == METHOD_CREATE_PERMISSION || m.typ.method == METHOD_CHANNEL_BIND {
            let refused = m
                .attributes
                .0
                .iter()
                .filter(|a| a.typ == ATTR_XOR_PEER_ADDRESS)
                .any(|a| {
                    xor_address(&a.value, &m.transaction_id.0)
                        .is_none_or(|peer| !self.peer_allowed(peer.ip()))
                });
            if refused {
                self.refuse("peer");
                return Some((
                    CODE_FORBIDDEN,
                    "this relay only reaches the SFU's media ports",
                ));
            }
        }
        if m.typ.method == METHOD_ALLOCATE {
            // The first Allocate carries no credentials (the server challenges it): nothing
            // to count yet.
            let user = m.get(ATTR_USERNAME).ok()?;
            let user = String::from_utf8_lossy(&user).into_owned();
            let allocations = self.allocations.lock().unwrap_or_else(|e| e.into_inner());
            let total: usize = allocations.values().sum();
            if allocations.get(&user).copied().unwrap_or(0) >= self.max_per_user
                || total >= self.max_total
            {
                self.refuse("quota");
                return Some((CODE_ALLOC_QUOTA_REACHED, "allocation quota reached"));
            }
            drop(allocations);
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            pending.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(30));
            pending.insert(m.transaction_id.0, (user, now));
        }
        None
    }

    /// The TURN server answered: an Allocate success makes an allocation of its user.
    fn answered(&self, m: &Message) {
        if m.typ.method != METHOD_ALLOCATE {
            return;
        }
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&m.transaction_id.0);
        if let (Some((user, _)), true) = (pending, m.typ.class == CLASS_SUCCESS_RESPONSE) {
            *self
                .allocations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(user)
                .or_default() += 1;
            self.metrics.turn_allocations.inc();
        }
    }

    fn closed(&self, user: &str) {
        let mut allocations = self.allocations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = allocations.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                allocations.remove(user);
            }
            self.metrics.turn_allocations.dec();
        }
    }
}

/// The error response to request `m`, encoded.
fn error_response(m: &Message, code: ErrorCode, reason: &str) -> Option<Vec<u8>> {
    let mut answer = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(m.transaction_id),
        Box::new(MessageType::new(m.typ.method, CLASS_ERROR_RESPONSE)),
        Box::new(ErrorCodeAttribute {
            code,
            reason: reason.as_bytes().to_vec(),
        }),
    ];
    answer.build(&setters).ok()?;
    Some(answer.raw)
}

/// An XOR-PEER-ADDRESS value (RFC 8489 §14.2).
fn xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([value.get(2)? ^ COOKIE[0], value.get(3)? ^ COOKIE[1]]);
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&COOKIE);
    key.extend_from_slice(transaction_id);
    let ip = match family {
        1 => {
            let b: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            IpAddr::from(std::array::from_fn::<u8, 4, _>(|i| b[i] ^ key[i]))
        }
        2 => {
            let b: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            IpAddr::from(std::array::from_fn::<u8, 16, _>(|i| b[i] ^ key[i]))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A TURN listener (UDP socket or TLS connections), with the guard in front of the TURN server.
struct GuardedListener {
    inner: Arc<dyn Conn + Send + Sync>,
    guard: Arc<Guard>,
}

#[async_trait]
impl Conn for GuardedListener {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        self.inner.connect(addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.inner.recv_from(buf).await?;
            let mut m = Message::new();
            if !stun::message::is_message(&buf[..n]) || m.unmarshal_binary(&buf[..n]).is_err() {
                return Ok((n, from));
            }
            let Some((code, reason)) = self.guard.check(&m) else {
                return Ok((n, from));
            };
            if let Some(answer) = error_response(&m, code, reason) {
                let _ = self.inner.send_to(&answer, from).await;
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        self.inner.send(buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let mut m = Message::new();
        if stun::message::is_message(buf) && m.unmarshal_binary(buf).is_ok() {
            self.guard.answered(&m);
        }
        self.inner.send_to(buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// TLS connections a TURN/TLS listener keeps at most.
const MAX_TLS_CONNECTIONS: usize = 4096;
/// A TLS client must finish its handshake within this long.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// TURN over TLS (RFC 8656 §3.1): the accepted connections behind one packet-style [`Conn`],
/// each message cut from its stream by its own length (STUN header, or ChannelData padded to 4
/// bytes), each reply written to the connection of its 5-tuple's address.
struct TlsConnections {
    local: SocketAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    writers: Writers,
}

type Writers = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

impl TlsConnections {
    fn start(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, incoming) = mpsc::channel(1024);
        let writers: Writers = Arc::default();
        let open = writers.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, addr)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let count = open.lock().unwrap_or_else(|e| e.into_inner()).len();
                if count >= MAX_TLS_CONNECTIONS {
                    continue;
                }
                let served = serve_tls(tcp, addr, acceptor.clone(), tx.clone(), open.clone());
                tokio::spawn(served);
            }
        });
        Self {
            local,
            incoming: tokio::sync::Mutex::new(incoming),
            writers,
        }
    }
}

/// One TURN/TLS client: its handshake, then its messages in and its replies out.
async fn serve_tls(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    incoming: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    writers: Writers,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(tcp)).await else {
        return;
    };
    let (mut read, mut write) = tokio::io::split(tls);
    let (out, mut queue) = mpsc::channel::<Vec<u8>>(256);
    writers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(addr, out);
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            if write.write_all(&message).await.is_err() {
                break;
            }
        }
    });
    loop {
        let mut head = [0u8; 4];
        if read.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let (rest, keep) = match head[0] >> 6 {
            // STUN: a 20-byte header, then `len` bytes of attributes.
            0 => (16 + len, 20 + len),
            // ChannelData: `len` bytes of data, padded to 4 over a stream.
            1 => ((len + 3) & !3, 4 + len),
            _ => break,
        };
        let mut message = vec![0u8; 4 + rest];
        message[..4].copy_from_slice(&head);
        if read.read_exact(&mut message[4..]).await.is_err() {
            break;
        }
        message.truncate(keep);
        if incoming.send((message, addr)).await.is_err() {
            break;
        }
    }
    writers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&addr);
    writer.abort();
}

#[async_trait]
impl Conn for TlsConnections {
    async fn connect(&self, _addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let Some((message, from)) = self.incoming.lock().await.recv().await else {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
        };
        let n = message.len().min(buf.len());
        buf[..n].copy_from_slice(&message[..n]);
        Ok((n, from))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(buf.len())
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        let writer = self
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target)
            .cloned();
        if let Some(writer) = writer {
            // A client that does not read loses messages, as over UDP.
            let _ = writer.try_send(buf.to_vec());
        }
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// A TLS acceptor for the certificate and key in these PEM files.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|c| c.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("TURN TLS certificate {}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("TURN TLS key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A byte budget refilled at a fixed rate, one second deep.
struct Budget {
    bytes: f64,
    at: Instant,
}

/// One allocation's relay socket: it reaches the SFU's media addresses only, within the byte
/// rate of an allocation, and counts what it relays.
struct RelaySocket {
    socket: UdpSocket,
    guard: Arc<Guard>,
    sent: Mutex<Budget>,
    received: Mutex<Budget>,
}

impl RelaySocket {
    /// Takes `n` bytes from `budget`; false if the allocation is over its rate.
    fn spend(&self, budget: &Mutex<Budget>, n: usize) -> bool {
        let rate = self.guard.max_bytes_per_second as f64;
        let mut b = budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        b.bytes = (b.bytes + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
        b.at = now;
        if b.bytes < n as f64 {
            self.guard.refuse("rate");
            return false;
        }
        b.bytes -= n as f64;
        self.guard.metrics.turn_relayed_bytes.inc_by(n as u64);
        true
    }
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            let (n, from) = self.socket.recv_from(buf).await?;
            if self.guard.peers.contains(&from) && self.spend(&self.received, n) {
                return Ok((n, from));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.guard.peers.contains(&target) {
            self.guard.refuse("peer");
            return Ok(buf.len());
        }
        if !self.spend(&self.sent, buf.len()) {
            return Ok(buf.len());
        }
        Ok(self.socket.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Binds relay sockets in the configured port range.
struct Relays {
    bind: IpAddr,
    /// The address given to clients as the relayed address.
    advertised: IpAddr,
    ports: (u16, u16),
    guard: Arc<Guard>,
}

#[async_trait]
impl ::turn::relay::RelayAddressGenerator for Relays {
    fn validate(&self) -> TurnResult<()> {
        Ok(())
    }

    async fn allocate_conn(
        &self,
        _use_ipv4: bool,
        _requested_port: u16,
    ) -> TurnResult<(Arc<dyn Conn + Send + Sync>, SocketAddr)> {
        let (low, high) = self.ports;
        let span = u32::from(high - low) + 1;
        let start: u32 = rand::random::<u32>() % span;
        for i in 0..span.min(64) {
            let port = low + ((start + i) % span) as u16;
            let Ok(socket) = UdpSocket::bind(SocketAddr::new(self.bind, port)).await else {
                continue;
            };
            let rate = self.guard.max_bytes_per_second as f64;
            let full = || {
                Mutex::new(Budget {
                    bytes: rate,
                    at: Instant::now(),
                })
            };
            let relay = RelaySocket {
                socket,
                guard: self.guard.clone(),
                sent: full(),
                received: full(),
            };
            return Ok((Arc::new(relay), SocketAddr::new(self.advertised, port)));
        }
        Err(::turn::Error::ErrAllocatePacketConnMustBeSet)
    }
}

/// Checks a TURN REST credential: unexpired, and its password the HMAC of its username.
struct RestAuth {
    secret: Vec<u8>,
    guard: Arc<Guard>,
}

impl ::turn::auth::AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        _src_addr: SocketAddr,
    ) -> TurnResult<Vec<u8>> {
        let expiry = username
            .split_once(':')
            .and_then(|(expiry, _)| expiry.parse::<u64>().ok());
        if expiry.is_none_or(|e| e < unix_seconds()) {
            self.guard.refuse("credentials");
            return Err(::turn::Error::ErrNoSuchUser);
        }
        let password = password(&self.secret, username);
        Ok(::turn::auth::generate_auth_key(username, realm, &password))
    }
}

/// The credential secret when `turn.secret` is empty: one of its own, from the API secret.
pub fn derive_secret(api_secret: &str) -> Vec<u8> {
    hmac_sha1(api_secret.as_bytes(), b"sfu turn credentials")
}

/// base64(HMAC-SHA1(secret, username)), the TURN REST password.
pub fn password(secret: &[u8], username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha1(secret, username.as_bytes()))
}

fn hmac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The running TURN server and what clients are told of it.
pub struct Turn {
    server: ::turn::server::Server,
    secret: Vec<u8>,
    urls: Vec<String>,
    ttl: Duration,
    /// The listening address.
    pub addr: SocketAddr,
}

impl Turn {
    /// Starts the TURN server of `config` for the media addresses `peers`; `advertised` are
    /// the addresses clients reach this machine at. With `tls` (certificate and key files) it
    /// takes TURN over TLS too, on `turn.tls_port`.
    pub async fn start(
        config: &TurnConfig,
        bind: IpAddr,
        advertised: &[IpAddr],
        peers: Vec<SocketAddr>,
        secret: Vec<u8>,
        tls: Option<(&std::path::Path, &std::path::Path)>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(bind, config.udp_port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind TURN UDP {bind}:{}: {e}", config.udp_port))?;
        let addr = socket.local_addr()?;
        let guard = Arc::new(Guard {
            peers: peers.into_iter().collect(),
            max_per_user: config.max_allocations_per_user,
            max_total: config.max_allocations,
            max_bytes_per_second: config.max_bitrate / 8,
            allocations: Mutex::default(),
            pending: Mutex::default(),
            metrics,
        });
        let (closed_tx, mut closed) = mpsc::channel::<::turn::allocation::AllocationInfo>(64);
        let closing = guard.clone();
        tokio::spawn(async move {
            while let Some(info) = closed.recv().await {
                closing.closed(&info.username);
            }
        });
        let advertised_ip = advertised.first().copied().unwrap_or(bind);
        let relays = || {
            Box::new(Relays {
                bind,
                advertised: advertised_ip,
                ports: (config.relay_port_min, config.relay_port_max),
                guard: guard.clone(),
            })
        };
        let mut conn_configs = vec![::turn::server::config::ConnConfig {
            conn: Arc::new(GuardedListener {
                inner: Arc::new(socket),
                guard: guard.clone(),
            }),
            relay_addr_generator: relays(),
        }];
        let mut tls_addr = None;
        if let Some((cert, key)) = tls {
            let acceptor = tls_acceptor(cert, key)?;
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, config.tls_port))
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot bind TURN TLS {bind}:{}: {e}", config.tls_port)
                })?;
            tls_addr = Some(listener.local_addr()?);
            conn_configs.push(::turn::server::config::ConnConfig {
                conn: Arc::new(GuardedListener {
                    inner: Arc::new(TlsConnections::start(listener, acceptor)),
                    guard: guard.clone(),
                }),
                relay_addr_generator: relays(),
            });
        }
        let server = ::turn::server::Server::new(::turn::server::config::ServerConfig {
            conn_configs,
            realm: REALM.into(),
            auth_handler: Arc::new(RestAuth {
                secret: secret.clone(),
                guard,
            }),
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: Some(closed_tx),
        })
        .await?;
        let mut urls: Vec<String> = advertised
            .iter()
            .map(|ip| format!("turn:{}?transport=udp", SocketAddr::new(*ip, addr.port())))
            .collect();
        if let Some(tls_addr) = tls_addr {
            // Clients check the certificate against this name.
            let host = match &config.domain {
                Some(domain) => domain.clone(),
                None => advertised_ip.to_string(),
            };
            urls.push(format!("turns:{host}:{}?transport=tcp", tls_addr.port()));
        }
        tracing::info!(%addr, ?tls_addr, "TURN server listening");
        Ok(Self {
            server,
            secret,
            urls,
            ttl: config.credential_ttl,
            addr,
        })
    }

    /// A credential for `identity`, valid for `turn.credential_ttl`.
    pub fn ice_server(&self, identity: &str) -> IceServer {
        let username = format!("{}:{identity}", unix_seconds() + self.ttl.as_secs());
        IceServer {
            urls: self.urls.clone(),
            credential: Some(password(&self.secret, &username)),
            username: Some(username),
        }
    }

    pub async fn close(&self) {
        let _ = self.server.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_passwords_are_the_hmac_of_the_username() {
        // RFC 2202 test case 2 for HMAC-SHA1.
        let p = password(b"Jefe", "what do ya want for nothing?");
        assert_eq!(p, "7/zfauXrL6LSdBbV8YTfnCWafHk=");
    }

    fn guard(max_per_user: usize, max_total: usize, bitrate: u64) -> Arc<Guard> {
        Arc::new(Guard {
            peers: ["127.0.0.1:7882".parse().unwrap()].into_iter().collect(),
            max_per_user,
            max_total,
            max_bytes_per_second: bitrate / 8,
            allocations: Mutex::default(),
            pending: Mutex::default(),
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// A request or response of `method` and `class`, with a USERNAME and a transaction id.
    fn message(
        method: stun::message::Method,
        class: stun::message::MessageClass,
        id: u8,
        user: &str,
    ) -> Message {
        let mut m = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(stun::agent::TransactionId([id; 12])),
            Box::new(MessageType::new(method, class)),
            Box::new(stun::textattrs::TextAttribute::new(
                ATTR_USERNAME,
                user.into(),
            )),
        ];
        m.build(&setters).unwrap();
        m
    }

    /// `user` asks to allocate; the TURN server grants it. Whether the guard let it through.
    fn allocate(g: &Guard, id: u8, user: &str) -> bool {
        let request = message(METHOD_ALLOCATE, CLASS_REQUEST, id, user);
        if g.check(&request).is_some() {
            return false;
        }
        g.answered(&message(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE, id, user));
        true
    }

    #[test]
    fn allocations_are_capped_per_user_and_in_all_and_freed_when_they_close() {
        let g = guard(2, 3, 8000);
        assert!(allocate(&g, 1, "1:alice"));
        assert!(allocate(&g, 2, "1:alice"));
        assert!(!allocate(&g, 3, "1:alice"), "alice's third");
        assert!(allocate(&g, 4, "1:bob"));
        assert!(!allocate(&g, 5, "1:carol"), "the fourth in all");
        g.closed("1:alice");
        assert!(
            allocate(&g, 6, "1:carol"),
            "a closed allocation frees its place"
        );
        assert_eq!(g.metrics.turn_allocations.get(), 3);
        let quota = g.metrics.turn_refusals.with_label_values(&["quota"]).get();
        assert_eq!(quota, 2);
    }

    #[tokio::test]
    async fn an_allocation_relays_at_most_its_bitrate() {
        let g = guard(1, 1, 8000); // 1,000 bytes per second
        let relay = RelaySocket {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            guard: g.clone(),
            sent: Mutex::new(Budget {
                bytes: 1000.0,
                at: Instant::now(),
            }),
            received: Mutex::new(Budget {
                bytes: 1000.0,
                at: Instant::now(),
            }),
        };
        assert!(relay.spend(&relay.sent, 600));
        assert!(
            !relay.spend(&relay.sent, 600),
            "1,200 bytes at once from a 1,000 budget"
        );
        assert!(
            relay.spend(&relay.received, 600),
            "each way has its own budget"
        );
        assert_eq!(g.metrics.turn_relayed_bytes.get(), 1200);
        assert_eq!(
            g.metrics.turn_refusals.with_label_values(&["rate"]).get(),
            1
        );
    }

    #[test]
    fn xor_peer_addresses_decode() {
        // 192.0.2.1:32853 XORed with the magic cookie (RFC 5769 §2.2).
        let value = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        assert_eq!(
            xor_address(&value, &[0; 12]),
            Some("192.0.2.1:32853".parse().unwrap())
        );
        assert_eq!(xor_address(&[0, 9, 0, 0], &[0; 12]), None);
    }
}
