//! A cut-able TCP proxy between eddy and a hub, for links that die: a reset (RST) now or after
//! some more bytes (mid-batch), and a blackhole that swallows packets without any reset.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Context;

/// How often pump threads look at their flags.
const POLL: Duration = Duration::from_millis(20);

struct Shared {
    upstream: SocketAddr,
    blackhole: AtomicBool,
    /// Client→upstream bytes still allowed before every connection is reset; negative: off.
    reset_after: AtomicI64,
    connections: Mutex<Vec<Arc<AtomicBool>>>,
    accepted: AtomicU64,
    resets: AtomicU64,
    stop: AtomicBool,
}

/// A running proxy on a free loopback port. Dropping it stops accepting.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl TcpProxy {
    /// Forwards connections on a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").context("proxy bind")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            blackhole: AtomicBool::new(false),
            reset_after: AtomicI64::new(-1),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        thread::spawn(move || accept_loop(listener, accept_shared));
        Ok(TcpProxy { addr, shared })
    }

    /// Where eddy should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blackhole on: bytes in both directions are read and thrown away, nothing is reset, new
    /// connections are accepted and then hear nothing. Off: forwarding resumes.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Resets (RST) every open connection now.
    pub fn reset_all(&self) {
        for conn in self.shared.connections.lock().unwrap().drain(..) {
            conn.store(true, Ordering::SeqCst);
        }
        self.shared.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// Forwards `n` more client→upstream bytes, then resets every connection (mid-batch).
    pub fn reset_after_bytes(&self, n: u64) {
        self.shared.reset_after.store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Resets done so far (by `reset_all` or an armed `reset_after_bytes` that fired).
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.reset_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
                else {
                    reset(&client);
                    continue;
                };
                let flag = Arc::new(AtomicBool::new(false));
                shared.connections.lock().unwrap().push(flag.clone());
                let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
                    continue;
                };
                let up_shared = shared.clone();
                let up_flag = flag.clone();
                thread::spawn(move || pump(client, upstream, up_flag, up_shared, true));
                let down_shared = shared.clone();
                thread::spawn(move || pump(upstream2, client2, flag, down_shared, false));
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Copies `from` → `to` until EOF, an error, or the connection's reset flag.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    reset_flag: Arc<AtomicBool>,
    shared: Arc<Shared>,
    client_to_upstream: bool,
) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if reset_flag.load(Ordering::SeqCst) {
            break;
        }
        match from.read(&mut buffer) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if shared.blackhole.load(Ordering::SeqCst) {
                    continue;
                }
                let mut allowed = n;
                let mut fire = false;
                if client_to_upstream {
                    let budget = shared.reset_after.load(Ordering::SeqCst);
                    if budget >= 0 {
                        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
                        if n >= budget {
                            allowed = budget;
                            fire = true;
                        } else {
                            shared.reset_after.fetch_sub(i64::try_from(n).unwrap_or(0), Ordering::SeqCst);
                        }
                    }
                }
                if to.write_all(&buffer[..allowed]).is_err() {
                    break;
                }
                if fire {
                    shared.reset_after.store(-1, Ordering::SeqCst);
                    for conn in shared.connections.lock().unwrap().drain(..) {
                        conn.store(true, Ordering::SeqCst);
                    }
                    shared.resets.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            }
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    // Linger 0 makes the close an RST once every copy of the socket is closed (the other pump
    // sees the same flag and closes its copies too).
    reset(&from);
    reset(&to);
}

fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}
