//! Sensor readings and where they come from: the reading and its schema, line parsers with
//! counted rejections, and the sources (TCP, serial, MQTT, built-in simulator) that feed the
//! daemon.
#![deny(missing_docs)]

mod framing;
mod ingest;
mod mqtt;
mod parse;
mod reading;
mod registry;
mod reject;
mod schema;
mod serial;
mod simulator;
mod stats;
mod tcp;

pub use crate::framing::{Fill, Frame, LineFramer, READ_CHUNK_BYTES};
pub use crate::ingest::{
    ingest_channel, Durability, IngestBatch, IngestClosed, IngestPermit, IngestReceiver, IngestSender, Mark,
    StoredMarks,
};
pub use crate::mqtt::{
    decode_payload, MqttBroker, MqttConnectionStats, MqttQos, MqttSetupError, MqttSource, MqttSourceConfig,
    MqttSourceError, MqttTls, PayloadRules, RawMqttSource, Secret,
};
pub use crate::parse::{Format, Limits, LineDecoder, LineParser, ParsedLine, TsPrecision};
pub use crate::reading::{Reading, Tags, Values, MAX_SENSOR_BYTES};
pub use crate::registry::{AdmittedSensors, SensorRegistry};
pub use crate::reject::{RejectReason, Rejection};
pub use crate::schema::{FieldSpec, InternedTags, Schema, TagSpec};
pub use crate::serial::{
    LineSeparator, RawSerialSource, SerialParity, SerialSource, SerialSourceConfig, SerialSourceError,
};
pub use crate::simulator::{
    simulate_mqtt, simulate_serial, simulate_tcp, RawSimulatorSource, SimulateError, SimulateMqttError,
    SimulateMqttOptions, SimulateMqttReport, SimulateOptions, SimulateReport, SimulateSerialError,
    SimulateSerialOptions, SimulateSerialReport, SimulatorConfig, SimulatorError, SimulatorSource,
    ThermostatMode, ThermostatSample, Thermostats,
};
pub use crate::stats::{SourceStats, SourceStatsSnapshot};
pub use crate::tcp::{
    auth_line_matches, parse_session_line, take_held_back_warnings, PeerNet, RawTcpSource,
    TcpConnectionStats, TcpSource, TcpSourceConfig, TcpSourceError, TcpTls, MAX_SESSION_ID_BYTES,
};
