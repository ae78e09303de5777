//! eddy's end-to-end tests: the real binary, fed over TCP, serial pseudo-terminals and a real
//! MQTT broker, checked through its outputs.

mod api;
mod architecture;
mod budget;
mod cli;
mod clock;
mod conformance;
mod crash;
mod disk_full;
mod docs;
mod flash_wear;
mod hostile_mqtt;
mod hostile_state;
mod hostile_tcp;
mod ingest;
mod log_safety;
mod long_outage;
mod mqtt;
mod panic;
mod power_cut;
mod reload;
mod schema;
mod secrets;
mod serial;
mod session;
mod settings;
mod shutdown;
mod spark_schema;
mod tidy;
mod uplink;
mod uplink_http;
mod uplink_kafka;
mod uplink_mqtt;
mod uplink_refusals;
mod uplink_tls;
