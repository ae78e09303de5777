//! eddy's end-to-end tests: the real binary, fed over TCP, serial pseudo-terminals and a real
//! MQTT broker, checked through its outputs.

mod cli;
mod conformance;
mod ingest;
mod mqtt;
mod serial;
mod shutdown;
mod tidy;
