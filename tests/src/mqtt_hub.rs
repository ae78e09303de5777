//! A QoS 1 subscriber that collects what eddy publishes to a hub broker (a [`Mosquitto`]),
//! across broker restarts: a persistent session, so messages queued while it reconnects are
//! not lost.
//!
//! [`Mosquitto`]: crate::mosquitto::Mosquitto

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// The collector; dropping it stops its thread.
pub struct MqttCollector {
    /// (topic, record, when its message arrived), in arrival order.
    records: Arc<Mutex<Vec<(String, serde_json::Value, Instant)>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl MqttCollector {
    /// Subscribes to `filter` (e.g. `devices/#`) on the broker at `addr` with QoS 1.
    pub fn start(addr: SocketAddr, filter: &str) -> MqttCollector {
        let mut options =
            MqttOptions::new(format!("collector-{}", addr.port()), addr.ip().to_string(), addr.port());
        options.set_clean_session(false);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(1 << 24, 1 << 24);
        let (client, mut connection) = Client::new(options, 64);
        let records = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_records, thread_subscribed, thread_stop) =
            (records.clone(), subscribed.clone(), stop.clone());
        let filter = filter.to_owned();
        thread::spawn(move || {
            for event in connection.iter() {
                if thread_stop.load(Ordering::SeqCst) {
                    return;
                }
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => thread_subscribed.store(true, Ordering::SeqCst),
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let arrived = Instant::now();
                        let value: serde_json::Value = serde_json::from_slice(&publish.payload)
                            .unwrap_or_else(|error| panic!("hub message is not JSON: {error}"));
                        let mut records = thread_records.lock().unwrap();
                        match value {
                            serde_json::Value::Array(items) => records
                                .extend(items.into_iter().map(|item| (publish.topic.clone(), item, arrived))),
                            other => records.push((publish.topic.clone(), other, arrived)),
                        }
                    }
                    Ok(_) => {}
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        MqttCollector { records, subscribed, stop }
    }

    /// True once the broker confirmed the subscription.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }

    /// How many records have arrived so far (duplicates included); cheap, for polling.
    pub fn len(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (topic, record) of everything received so far, in arrival order (duplicates included).
    pub fn records(&self) -> Vec<(String, serde_json::Value)> {
        let records = self.records.lock().unwrap();
        records.iter().map(|(topic, record, _)| (topic.clone(), record.clone())).collect()
    }

    /// The records received so far from the `from`-th on, each with the moment its message
    /// arrived, in arrival order.
    pub fn records_with_arrival(&self, from: usize) -> Vec<(Instant, serde_json::Value)> {
        let records = self.records.lock().unwrap();
        records.iter().skip(from).map(|(_, record, arrived)| (*arrived, record.clone())).collect()
    }
}

impl Drop for MqttCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
