//! systemd's notification protocol (`Type=notify`): READY=1 once eddy takes readings,
//! STOPPING=1 when the drain starts, WATCHDOG=1 only while the pipeline moves (or the daemon
//! is waiting for its store, and says so), STATUS= for what it is doing, and
//! EXTEND_TIMEOUT_USEC= while it waits for a full disk before READY.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` in the abstract namespace). std's `UnixDatagram` does it in a few
//! lines, so no crate: `sd-notify` would add a dependency for the same ~20 lines, and
//! libsystemd is not linked (it would tie the binary to the device's libsystemd).

use std::time::Duration;

/// Sends `state` to systemd; false when not under systemd (no `NOTIFY_SOCKET`) or on error.
pub(crate) fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return false };
    match send(&socket, state) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, state, "Cannot notify systemd.");
            false
        }
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::UnixDatagram;
    let datagram = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            datagram.send_to_addr(state.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::other("abstract sockets need Linux"));
        }
    }
    datagram.send_to(state.as_bytes(), std::path::Path::new(socket))?;
    Ok(())
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`, for this process per
/// `WATCHDOG_PID`), if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|pid| pid.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog every third of its interval, but only when `progress` moved since the
/// last look. The daemon's progress is the pipeline's heartbeat (chunks and ticks through the
/// engine) plus the beats of its main loop while it waits for a failed store to open again
/// (once a second): a stuck fsync, a wedged engine, a dead ingest task or a wedged main loop
/// stop the pings, and systemd restarts eddy (`Restart=`); a full disk it waits out does not.
/// `ping` sends WATCHDOG=1 ([`notify`] in the daemon).
pub(crate) async fn watchdog(interval: Duration, progress: impl Fn() -> u64, mut ping: impl FnMut()) {
    let every = interval / 3;
    let mut last = progress();
    let mut warned = false;
    loop {
        tokio::time::sleep(every).await;
        let now = progress();
        if now != last {
            last = now;
            ping();
            if warned {
                tracing::info!("Pipeline moves again; watchdog pings resumed.");
                warned = false;
            }
        } else if !warned {
            tracing::warn!(?interval, "Pipeline made no progress; not pinging the systemd watchdog.");
            warned = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn notify_writes_the_state_to_the_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }

    /// No ping while the pipeline's heartbeat stands still, one per look while it moves.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_pinged_only_while_the_pipeline_moves() {
        let pipeline = Arc::new(AtomicU64::new(0));
        let pings = Arc::new(AtomicU64::new(0));
        let counted = pings.clone();
        let progress = pipeline.clone();
        let task = tokio::spawn(watchdog(
            Duration::from_secs(3),
            move || progress.load(Ordering::Relaxed),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
        ));
        // Stalled for 10 looks: no ping.
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(pings.load(Ordering::Relaxed), 0);
        // Moving: a ping at each look (every second).
        for _ in 0..5 {
            pipeline.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(pings.load(Ordering::Relaxed), 5);
        // Stalled again: the pings stop.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pings.load(Ordering::Relaxed), 5);
        task.abort();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notify_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("eddy-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
