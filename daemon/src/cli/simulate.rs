//! `eddy simulate --serial PATH` and `eddy simulate --mqtt URL`: the command-line side of the
//! sensors crate's simulator clients (and `--tcp`).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use eddy_sensors::{MqttBroker, MqttQos, MqttTls, Secret};
use tokio_util::sync::CancellationToken;

/// Options of the serial and MQTT targets.
#[derive(Debug, clap::Args)]
pub(crate) struct TransportArgs {
    /// Serial line speed.
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// MQTT topic of each reading; `{sensor}` is replaced by the thermostat's id.
    #[arg(long, default_value = "sensors/{sensor}/reading")]
    topic: String,
    /// MQTT readings per message, 1 to 500: more than 1 publishes a JSON array of one
    /// thermostat's successive readings (500 of them stay under the 64 KiB packet limit).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=500))]
    per_message: u32,
    /// MQTT QoS: 0, 1 or 2.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// MQTT client id (default: eddy-simulate-PID).
    #[arg(long)]
    client_id: Option<String>,
    /// MQTT user name.
    #[arg(long)]
    username: Option<String>,
    /// File holding the MQTT password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// CA certificate(s) for mqtts://, PEM.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

/// How many readings, how fast.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Load {
    pub(crate) sensors: u32,
    pub(crate) rate: Option<f64>,
    pub(crate) count: Option<u64>,
    pub(crate) seed: u64,
}

fn sensors(load: &Load) -> Result<NonZeroU32, ExitCode> {
    NonZeroU32::new(load.sensors).ok_or_else(|| {
        eprintln!("eddy simulate: --sensors must be at least 1");
        ExitCode::from(2)
    })
}

/// Writes readings to a serial port.
pub(crate) async fn serial(
    path: PathBuf,
    args: &TransportArgs,
    load: Load,
    shutdown: CancellationToken,
) -> ExitCode {
    let sensors = match sensors(&load) {
        Ok(sensors) => sensors,
        Err(code) => return code,
    };
    let options = eddy_sensors::SimulateSerialOptions {
        path,
        baud: args.baud,
        sensors,
        rate: load.rate,
        count: load.count,
        seed: load.seed,
        shutdown,
    };
    match eddy_sensors::simulate_serial(options).await {
        Ok(report) => {
            println!("wrote {} readings in {:.3} s", report.written, report.elapsed.as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("eddy simulate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Publishes readings to an MQTT broker.
pub(crate) async fn mqtt(
    url: &str,
    args: &TransportArgs,
    load: Load,
    shutdown: CancellationToken,
) -> ExitCode {
    let sensors = match sensors(&load) {
        Ok(sensors) => sensors,
        Err(code) => return code,
    };
    let broker = match MqttBroker::parse_url(url) {
        Ok(broker) => broker,
        Err(message) => {
            eprintln!("eddy simulate: --mqtt: {message}");
            return ExitCode::from(2);
        }
    };
    let qos = match args.qos {
        0 => MqttQos::AtMostOnce,
        1 => MqttQos::AtLeastOnce,
        2 => MqttQos::ExactlyOnce,
        _ => {
            eprintln!("eddy simulate: --qos must be 0, 1 or 2");
            return ExitCode::from(2);
        }
    };
    let password = match &args.password_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(Secret::new(text.trim_end_matches(['\n', '\r']))),
            Err(error) => {
                eprintln!("eddy simulate: cannot read {}: {error}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    let options = eddy_sensors::SimulateMqttOptions {
        broker,
        topic: args.topic.clone(),
        qos,
        client_id: args.client_id.clone().unwrap_or_else(|| format!("eddy-simulate-{}", std::process::id())),
        username: args.username.clone(),
        password,
        tls: args.ca_file.clone().map(|ca_file| MqttTls { ca_file, client_auth: None }),
        sensors,
        rate: load.rate,
        count: load.count,
        per_message: NonZeroU32::new(args.per_message).unwrap_or(NonZeroU32::MIN),
        seed: load.seed,
        ack_timeout: Duration::from_secs(60),
        shutdown,
    };
    match eddy_sensors::simulate_mqtt(options).await {
        Ok(report) => {
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            let (published, readings) = (report.published, report.readings);
            // Display only: an f64 shows any plausible count exactly enough.
            #[allow(clippy::cast_precision_loss)]
            let per_second = readings as f64 / secs;
            if readings == published {
                println!(
                    "published {published} readings in {secs:.3} s ({per_second:.0}/s); acked by the broker {}",
                    report.acked
                );
            } else {
                println!(
                    "published {readings} readings in {published} messages in {secs:.3} s ({per_second:.0} readings/s); acked by the broker {}",
                    report.acked
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("eddy simulate: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `eddy simulate --tcp ADDR`.
pub(crate) async fn tcp(address: SocketAddr, load: Load, ack: bool, session: Option<String>) -> ExitCode {
    let Load { sensors, rate, count, seed } = load;
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    let stop = crate::cli::stop_signal();
    tokio::spawn(async move {
        stop.await;
        on_signal.cancel();
    });
    let Some(sensors) = std::num::NonZeroU32::new(sensors) else {
        eprintln!("eddy simulate: --sensors must be at least 1");
        return ExitCode::from(2);
    };
    let options = eddy_sensors::SimulateOptions {
        addr: address,
        sensors,
        rate,
        count,
        seed,
        wait_acks: ack || session.is_some(),
        ack_timeout: Duration::from_secs(60),
        session,
        shutdown: cancel,
    };
    match eddy_sensors::simulate_tcp(options).await {
        Ok(report) => {
            let secs = report.elapsed.as_secs_f64().max(1e-9);
            println!(
                "sent {} readings ({} bytes) in {:.3} s ({:.0}/s); acked {}, rejected {}, refused {}, already stored {}",
                report.sent,
                report.bytes,
                secs,
                report.sent as f64 / secs,
                report.acked,
                report.errors,
                report.nacked,
                report.dups
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("eddy simulate: {error}");
            ExitCode::FAILURE
        }
    }
}
