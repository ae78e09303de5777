//! A serial "device" for tests: `socat` copies what the test writes to its stdin into a
//! pseudo-terminal whose slave side is reachable through a symlink. Stopping socat unplugs
//! the device (the slave's reads fail with EIO and socat removes the link); starting it
//! again on the same link path plugs a new one in.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A running socat feeding a pseudo-terminal. Dropping it unplugs the device.
pub struct SerialDevice {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The symlink to the pseudo-terminal's slave: the path eddy opens.
    pub link: PathBuf,
}

impl SerialDevice {
    /// Starts socat with its pseudo-terminal at `link` and waits until the link exists.
    pub fn plug(link: &Path) -> anyhow::Result<SerialDevice> {
        let mut child = Command::new("socat")
            .arg("-u")
            .arg("STDIN")
            .arg(format!("pty,raw,echo=0,link={}", link.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot start socat: the serial tests need it for pseudo-terminals. Run \
                 ./scripts/test-all.sh (it installs it with apt-get) or `apt-get install socat`",
            )?;
        let stdin = child.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::symlink_metadata(link).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("socat exited with {status} before creating {}", link.display());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("socat did not create {} within 10 s", link.display());
            }
            thread::sleep(Duration::from_millis(10));
        }
        Ok(SerialDevice { child, stdin, link: link.to_path_buf() })
    }

    /// Sends bytes down the line, as one write.
    pub fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the device is unplugged")?;
        stdin.write_all(bytes).context("writing to socat")?;
        stdin.flush().context("flushing to socat")?;
        Ok(())
    }

    /// Unplugs the device: SIGTERM (socat removes its link), then waits until socat is gone.
    pub fn unplug(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("socat did not stop within 10 s");
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.stdin = None;
        // SIGTERM lets socat remove the link; make sure, so eddy never opens a stale path.
        let _ = std::fs::remove_file(&self.link);
        Ok(())
    }
}

impl Drop for SerialDevice {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}
