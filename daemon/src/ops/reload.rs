//! SIGHUP (`systemctl reload eddy`): reads the configuration file once, applies what can
//! change in a running daemon (the log level here; the sinks, handed to
//! [`crate::run_with_reloads`]) and names every other section that changed, which takes a
//! restart.
//!
//! What is applied is validated section by section: a file that does not parse changes
//! nothing, but an invalid restart-only section (a source's missing CA file) does not hold back
//! a sink's new token; that section's error is logged by key and it keeps its running value.
//! A sink whose own settings are invalid (an empty or unreadable secret file) keeps running as
//! it is, its error logged by key, while the other sinks reload.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::{Config, SinkReload};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tracing_subscriber::{filter::Targets, reload, Registry};

/// The handle that swaps the log filter.
pub type LogHandle = reload::Handle<Targets, Registry>;

/// Sections applied without a restart: `[log]` here, `[[sinks]]` by the daemon's main loop
/// (every key of a sink, delivery pacing included, is read only by that sink's task).
const RELOADABLE: &[&str] = &["log", "sinks"];

/// The configuration as the running daemon read it.
pub(crate) struct Running {
    pub(crate) path: Option<PathBuf>,
    /// The file's top-level tables and keys (empty for the built-in default).
    pub(crate) text: String,
    pub(crate) log_level: Option<String>,
}

/// What a reload read: `[log] level` when it is valid (its value may be None: the default),
/// and the sinks to apply.
type Read = (Option<Option<String>>, Option<SinkReload>);

/// The log filter from the environment: `EDDY_LOG`, else `RUST_LOG` (empty: unset). It
/// takes precedence over `[log] level`.
pub(crate) fn env_log_filter() -> Option<String> {
    ["EDDY_LOG", "RUST_LOG"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
}

/// Catches SIGHUP from now on. Call it inside the runtime before the daemon starts: until a
/// handler is installed, SIGHUP's default action ends the process, and systemd may send one
/// (`systemctl reload`) as soon as eddy has said READY=1.
pub(crate) fn catch_hangups() -> Option<Signal> {
    match signal(SignalKind::hangup()) {
        Ok(hangups) => Some(hangups),
        Err(error) => {
            tracing::warn!(%error, "Cannot listen for SIGHUP; reload by restarting eddy.");
            None
        }
    }
}

/// Handles the SIGHUPs `hangups` catches until the process ends; the sinks of each file
/// that parses go to `daemon`, which applies them.
pub(crate) async fn reload_on_hangup(
    mut hangups: Signal,
    mut running: Running,
    log: LogHandle,
    daemon: mpsc::Sender<SinkReload>,
) {
    while hangups.recv().await.is_some() {
        // Reading and validating reads files (secrets, TLS): off the async workers.
        let (next, (level, sinks)) = match tokio::task::spawn_blocking(move || {
            let read = reload(&running);
            (running, read)
        })
        .await
        {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(%error, "SIGHUP: the reload task failed; reload by restarting eddy.");
                return;
            }
        };
        running = next;
        if let Some(level) = level {
            apply_log_level(&mut running, level, &log);
        }
        if let Some(sinks) = sinks {
            // Sent every time, changed text or not: a secret file may have a new content.
            if daemon.send(sinks).await.is_err() {
                return; // the daemon has ended
            }
        }
    }
}

/// Reads the file once and validates it section by section: reports restart-only changes and
/// invalid sections, and returns the log level and the sinks to apply (None: the file cannot be
/// read or parsed, or that section is invalid).
fn reload(running: &Running) -> Read {
    let Some(path) = running.path.clone() else {
        tracing::info!("SIGHUP: running on the built-in default configuration; nothing to reload.");
        return (None, None);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "SIGHUP: cannot read the configuration; keeping the running one.");
            return (None, None);
        }
    };
    // Parsed twice from the same bytes: once whole, once for its sections on their own.
    let raw = match Config::raw_from_text(&path, &text) {
        Ok(raw) => raw,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "SIGHUP: invalid configuration; keeping the running one.");
            return (None, None);
        }
    };
    let level = raw.log.level();
    let sinks = match Config::from_text(&path, &text) {
        Ok(config) => {
            for warning in &config.warnings {
                tracing::warn!(%warning, "SIGHUP: configuration: a key to change.");
            }
            Some(SinkReload::from(&config))
        }
        Err(error) => {
            // A sink's own error is reported with what is applied (it keeps running as it is).
            if !error.key().is_some_and(|key| key.starts_with("sinks[")) {
                tracing::error!(path = %path.display(), %error, "SIGHUP: invalid configuration: this setting keeps its running value; the sinks and [log] are applied where valid.");
            }
            match raw.sinks_for_reload() {
                Ok(sinks) => Some(sinks),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the sinks are not reloaded: what they are validated against is invalid.");
                    None
                }
            }
        }
    };
    let level = match level {
        Ok(level) => Some(level),
        Err(error) => {
            tracing::error!(%error, "SIGHUP: log.level not applied.");
            None
        }
    };
    let changed = changed_sections(&running.text, &text);
    let needs_restart: Vec<&String> =
        changed.iter().filter(|key| !RELOADABLE.contains(&key.as_str())).collect();
    if needs_restart.is_empty() {
        tracing::info!("SIGHUP: configuration reloaded; nothing needs a restart.");
    } else {
        tracing::warn!(
            changed = ?needs_restart,
            "SIGHUP: these settings changed and take effect only after a restart (systemctl restart eddy); the running daemon keeps the old ones."
        );
    }
    (level, sinks)
}

/// Applies the log level a reload read, when it changed.
fn apply_log_level(running: &mut Running, new_level: Option<String>, log: &LogHandle) {
    if new_level != running.log_level {
        if env_log_filter().is_some() {
            tracing::warn!(
                "SIGHUP: log.level changed, but EDDY_LOG is set and takes precedence; not applied."
            );
        } else {
            let level = new_level.clone().unwrap_or_else(|| "info".to_owned());
            match level.parse::<Targets>().map(|filter| log.reload(filter)) {
                Ok(Ok(())) => tracing::info!(%level, "SIGHUP: log level applied."),
                Ok(Err(error)) => tracing::error!(%error, "SIGHUP: cannot apply the log level."),
                Err(error) => tracing::error!(%error, "SIGHUP: invalid log level."),
            }
        }
        running.log_level = new_level;
    }
}

/// Top-level keys and tables whose value differs between two TOML texts.
pub(crate) fn changed_sections(old: &str, new: &str) -> BTreeSet<String> {
    let parse = |text: &str| text.parse::<toml::Table>().unwrap_or_default();
    let (old, new) = (parse(old), parse(new));
    old.keys().chain(new.keys()).filter(|key| old.get(*key) != new.get(*key)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_sections_names_what_differs() {
        let old = "device_id = \"a\"\n[log]\nlevel = \"info\"\n[[sinks]]\nkind = \"console\"\n";
        let new = "device_id = \"a\"\n[log]\nlevel = \"debug\"\n[[sinks]]\nkind = \"file\"\npath = \"x\"\n[api]\nlisten = \"127.0.0.1:1\"\n";
        let changed: Vec<String> = changed_sections(old, new).into_iter().collect();
        assert_eq!(changed, ["api", "log", "sinks"]);
    }
}
