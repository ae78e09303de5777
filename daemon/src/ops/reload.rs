//! SIGHUP (`systemctl reload eddy`): re-reads the configuration file, applies what can change
//! in a running daemon (the log level here; the sinks, handed to [`crate::run_with_reloads`])
//! and names every other section that changed, which takes a restart. An invalid file
//! changes nothing and is logged.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::Config;
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

/// Handles the SIGHUPs `hangups` catches until the process ends; each valid configuration
/// goes to `daemon`, which applies its sinks.
pub(crate) async fn reload_on_hangup(
    mut hangups: Signal,
    mut running: Running,
    log: LogHandle,
    daemon: mpsc::Sender<Config>,
) {
    while hangups.recv().await.is_some() {
        if let Some(config) = reload(&mut running, &log) {
            // Sent every time, changed text or not: a secret file may have a new content.
            if daemon.send(config).await.is_err() {
                return; // the daemon has ended
            }
        }
    }
}

/// Applies the log level and reports restart-only changes; returns the new configuration
/// when it is valid.
fn reload(running: &mut Running, log: &LogHandle) -> Option<Config> {
    let Some(path) = running.path.clone() else {
        tracing::info!("SIGHUP: running on the built-in default configuration; nothing to reload.");
        return None;
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "SIGHUP: cannot read the configuration; keeping the running one.");
            return None;
        }
    };
    let config = match Config::load(Some(&path)) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "SIGHUP: invalid configuration; keeping the running one.");
            return None;
        }
    };
    for warning in &config.warnings {
        tracing::warn!(%warning, "SIGHUP: configuration: a key to change.");
    }
    if config.log_level != running.log_level {
        if env_log_filter().is_some() {
            tracing::warn!(
                "SIGHUP: log.level changed, but EDDY_LOG is set and takes precedence; not applied."
            );
        } else {
            let level = config.log_level.clone().unwrap_or_else(|| "info".to_owned());
            match level.parse::<Targets>().map(|filter| log.reload(filter)) {
                Ok(Ok(())) => tracing::info!(%level, "SIGHUP: log level applied."),
                Ok(Err(error)) => tracing::error!(%error, "SIGHUP: cannot apply the log level."),
                Err(error) => tracing::error!(%error, "SIGHUP: invalid log level."),
            }
        }
        running.log_level = config.log_level.clone();
    }
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
    Some(config)
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
