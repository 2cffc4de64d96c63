//! Connection limits of the client listener: at most `limits.max_connections` connections
//! open at once (past that, new ones wait in the OS backlog until one closes, so that the
//! process keeps descriptors for its database and files instead of failing with EMFILE),
//! and at most `limits.max_connections_per_ip` from one address (more are closed at once).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::LimitsConfig;

/// Descriptors kept for everything but client connections when the connection limit is
/// derived from the process's descriptor limit.
const RESERVED_DESCRIPTORS: usize = 256;

pub struct LimitedListener {
    inner: TcpListener,
    open: Arc<Semaphore>,
    per_ip: Option<PerIp>,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: &LimitsConfig) -> Self {
        let max = match limits.max_connections {
            0 => descriptor_limit().saturating_sub(RESERVED_DESCRIPTORS).max(64),
            n => n,
        };
        let per_ip = (limits.max_connections_per_ip > 0)
            .then(|| PerIp { max: limits.max_connections_per_ip, counts: Arc::default() });
        LimitedListener { inner, open: Arc::new(Semaphore::new(max)), per_ip }
    }
}

/// Open connections by address.
struct PerIp {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    /// Counts a connection from `ip`; None when that address has its maximum open.
    fn admit(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot { ip, counts: self.counts.clone() })
    }
}

/// The soft limit of open descriptors of this process.
fn descriptor_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

impl axum::serve::Listener for LimitedListener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            let permit = self.open.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let slot = match &self.per_ip {
                None => None,
                Some(per_ip) => match per_ip.admit(addr.ip()) {
                    Some(slot) => Some(slot),
                    None => {
                        tracing::debug!(ip = %addr.ip(), "too many connections from one address; closed");
                        continue;
                    }
                },
            };
            // Answers are written whole: do not hold the last segment of one back until the
            // client acknowledges the previous (Nagle), which with delayed ACKs costs up to 40 ms.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            return (Connection { stream, _permit: permit, _slot: slot }, addr);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One connection's share of its address's count, given back when the connection closes.
struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection holding its places in the limits until it is dropped.
pub struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _slot: Option<IpSlot>,
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
