//! The `eddy` command line: `run` (the daemon, with SIGHUP reloads), `check-config`,
//! `print-default-config`, `status`, `dead-letters` and `simulate`, each mapped to an exit
//! code (0 clean stop, 1 runtime failure, 2 invalid configuration, 3 store cannot be opened).

pub mod dead_letters;
mod log_line;
mod simulate;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_CONFIG_TOML};
use crate::ops::reload;
use crate::RunError;

pub use crate::ops::reload::LogHandle;

/// eddy: a small, crash-proof streaming daemon for IoT edge gateways.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (without --config: the built-in default, simulated thermostats with
    /// results on the console, data in ./eddy-data).
    Run {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file: exit 0 when valid, 2 with the offending key otherwise.
    #[command(alias = "validate")]
    CheckConfig {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the commented default configuration.
    PrintDefaultConfig,
    /// Show a running eddy's status (from its `[api] listen` endpoint): health, sources,
    /// engine, store and uplinks. Exit 0 when healthy, 1 when not or unreachable.
    Status {
        /// The configuration file (for `api.listen`).
        #[arg(long, short, default_value = "/etc/eddy/eddy.toml", conflicts_with = "addr")]
        config: PathBuf,
        /// The endpoint's address instead of the configuration's `api.listen`.
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Print the JSON document as served.
        #[arg(long)]
        json: bool,
    },
    /// Print the records sinks rejected permanently (the dead-letter tree), one JSON line
    /// each, while eddy is stopped; or, with --resend, put them back on their uplink (eddy
    /// stopped, or running with its endpoint on).
    DeadLetters {
        /// The TOML configuration file (for data_dir).
        #[arg(long, short)]
        config: PathBuf,
        /// Mark the dead letters for resend: each sink delivers them (same records, same ids,
        /// oldest first) when eddy starts next, or at once when it runs, and deletes them
        /// once delivered.
        #[arg(long)]
        resend: bool,
        /// With --resend: only the dead letters of this sink.
        #[arg(long, requires = "resend")]
        sink: Option<String>,
        /// With --resend while eddy runs: its endpoint's address instead of `api.listen`.
        #[arg(long, requires = "resend")]
        addr: Option<SocketAddr>,
    },
    /// Simulated thermostats as a client: send readings to a running eddy (a load generator)
    /// over TCP, to a serial port, or to an MQTT broker.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["tcp", "serial", "mqtt"])))]
    Simulate {
        /// Address of an eddy TCP source.
        #[arg(long)]
        tcp: Option<SocketAddr>,
        /// Serial port (or pseudo-terminal) to write JSON lines to.
        #[arg(long)]
        serial: Option<PathBuf>,
        /// MQTT broker to publish to: mqtt://host[:port] or mqtts://host[:port].
        #[arg(long)]
        mqtt: Option<String>,
        #[command(flatten)]
        transport: Box<simulate::TransportArgs>,
        /// Number of thermostats.
        #[arg(long, default_value_t = 10)]
        sensors: u32,
        /// Readings per second per thermostat; omit to send as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
        /// Total readings to send; omit to run until interrupted.
        #[arg(long)]
        count: Option<u64>,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Wait for eddy's durable acks (the source must have `ack = true`).
        #[arg(long)]
        ack: bool,
        /// TCP: number the lines in this session (`#session ID 1`, implies --ack): sent again
        /// with the same seed, they are answered `dup` and stored once.
        #[arg(long, requires = "tcp")]
        session: Option<String>,
    },
}

/// Runs the subcommand `cli` names; `log` changes the log filter (`[log] level`, SIGHUP).
pub fn main(cli: Cli, log: LogHandle) -> ExitCode {
    match cli.command {
        Command::Status { config, addr, json } => status::run(&config, addr, json),
        Command::PrintDefaultConfig => {
            print!("{DEFAULT_CONFIG_TOML}");
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => match Config::load(Some(&config)) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    eprintln!("eddy: warning: {warning}");
                }
                eprintln!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("eddy: invalid configuration: {error}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            // The file is read once: what runs is what a reload compares with.
            let text = match &config {
                None => None,
                Some(path) => match std::fs::read_to_string(path) {
                    Ok(text) => Some(text),
                    Err(error) => {
                        eprintln!("eddy: invalid configuration: {}: {error}", path.display());
                        return ExitCode::from(2);
                    }
                },
            };
            let loaded = match (&config, &text) {
                (Some(path), Some(text)) => Config::from_text(path, text),
                _ => Config::load(None),
            };
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(error) => {
                    eprintln!("eddy: invalid configuration: {error}");
                    return ExitCode::from(2);
                }
            };
            if let (Some(level), None) = (&loaded.log_level, reload::env_log_filter()) {
                // Validated with the configuration, so this applies.
                if let Ok(filter) = level.parse::<tracing_subscriber::filter::Targets>() {
                    let _ = log.reload(filter);
                }
            }
            for warning in &loaded.warnings {
                tracing::warn!(%warning, "Configuration: a key to change.");
            }
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            let running = reload::Running {
                text: text.unwrap_or_default(),
                path: config,
                log_level: loaded.log_level.clone(),
            };
            let config = loaded;
            let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
            // Installed here, not in the spawned task: that task may first run after READY=1.
            let hangups = {
                let _entered = runtime.enter();
                reload::catch_hangups()
            };
            if let Some(hangups) = hangups {
                runtime.spawn(reload::reload_on_hangup(hangups, running, log, reload_tx));
            }
            // SIGTERM and SIGINT are caught from here on, before anything starts.
            let stop = {
                let _entered = runtime.enter();
                stop_signal()
            };
            let result = runtime.block_on(crate::run_with_reloads(config, stop, reload_rx));
            // Not the runtime's drop, which waits for every blocking task: one may be stuck in
            // a system call (a reload setting up a file sink on a FIFO nobody reads, a hung
            // network file system) and must not hold the exit past the stop deadline.
            runtime.shutdown_timeout(Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(RunError::StoreOpen(error)) => {
                    tracing::error!(%error, "Cannot open the store.");
                    eprintln!("eddy: {error}");
                    ExitCode::from(3)
                }
                Err(RunError::Runtime(error)) => {
                    eprintln!("eddy: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DeadLetters { config, resend, sink, addr } => {
            let config = match Config::load(Some(&config)) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("eddy: invalid configuration: {error}");
                    return ExitCode::from(2);
                }
            };
            if resend {
                let runtime = match runtime() {
                    Ok(runtime) => runtime,
                    Err(code) => return code,
                };
                return match runtime.block_on(dead_letters::resend_dead_letters(
                    &config,
                    sink.as_deref(),
                    addr,
                    &mut std::io::stdout().lock(),
                )) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("eddy: {error:#}");
                        ExitCode::FAILURE
                    }
                };
            }
            match dead_letters::print_dead_letters(&config, &mut std::io::stdout().lock()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("eddy: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate { tcp, serial, mqtt, transport, sensors, rate, count, seed, ack, session } => {
            let runtime = match runtime() {
                Ok(runtime) => runtime,
                Err(code) => return code,
            };
            let load = simulate::Load { sensors, rate, count, seed };
            match (tcp, serial, mqtt) {
                (Some(tcp), _, _) => runtime.block_on(simulate::tcp(tcp, load, ack, session)),
                (_, Some(path), _) => runtime
                    .block_on(async { simulate::serial(path, &transport, load, cancel_on_signal()).await }),
                (_, _, Some(url)) => runtime
                    .block_on(async { simulate::mqtt(&url, &transport, load, cancel_on_signal()).await }),
                (None, None, None) => unreachable!("clap requires one of --tcp, --serial, --mqtt"),
            }
        }
    }
}

/// A token cancelled by the first SIGINT/SIGTERM (call inside the runtime).
pub(crate) fn cancel_on_signal() -> CancellationToken {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let stop = stop_signal();
    std::mem::drop(tokio::spawn(async move {
        stop.await;
        on_signal.cancel();
    }));
    cancel
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    // Two workers (a gateway has few cores, and each extra thread costs a malloc arena) and a
    // small blocking pool (file sinks and sled's flushes use it).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("eddy: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once. Call it inside the
/// runtime: SIGINT and SIGTERM are caught from this call on, not from the first poll of the
/// future, so a signal sent right after eddy said it is ready (systemd's stop, a test's) is
/// kept for the future instead of ending the process by its default action, undrained.
pub(crate) fn stop_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut signals = StopSignals::install();
    async move {
        signals.recv().await;
        tokio::spawn(async move {
            signals.recv().await;
            eprintln!("eddy: second signal, exiting at once");
            std::process::exit(130);
        });
    }
}

/// The SIGTERM and SIGINT listeners (`None`: the kernel refused one; the other still works).
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, signal = name, "Cannot listen for this signal; it will not stop eddy gracefully.");
                None
            }
        };
        StopSignals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        async fn next(listener: &mut Option<tokio::signal::unix::Signal>) {
            match listener {
                Some(listener) => {
                    listener.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let StopSignals { term, int } = self;
        tokio::select! {
            () = next(term) => {}
            () = next(int) => {}
        }
    }
}

/// Logs go to stderr (the console sink owns stdout). `EDDY_LOG` (or `RUST_LOG`) sets the
/// filter, else `[log] level`, default `info`; the returned handle changes it (SIGHUP).
/// Under systemd (journald sets `JOURNAL_STREAM`) timestamps and colours are left out: the
/// journal adds its own. Control characters inside a line are escaped (`log_line.rs`).
pub fn init_logging() -> LogHandle {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = reload::env_log_filter().unwrap_or_else(|| "info".into());
    let filter = filter.parse::<Targets>().unwrap_or_else(|error| {
        eprintln!("eddy: ignoring invalid log filter `{filter}`: {error}");
        Targets::new().with_default(LevelFilter::INFO)
    });
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer();
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        let writer = log_line::EscapingStderr { ansi: false };
        registry.with(fmt.without_time().with_ansi(false).with_writer(writer)).init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
        registry.with(fmt.with_ansi(ansi).with_writer(log_line::EscapingStderr { ansi })).init();
    }
    handle
}
