//! Simulated thermostats: a seeded, deterministic model of indoor temperature, humidity,
//! setpoint and mode, rendered as [`Reading`]s or as JSON lines.
//!
//! Each step of a thermostat moves its room temperature a little towards a target (the
//! setpoint when heating or cooling towards it, the slowly drifting ambient temperature
//! otherwise) plus sensor noise; humidity wanders between 30 and 60 %; the setpoint and the
//! mode change now and then. Values are rounded as real sensors report them: temperature to
//! 0.01 °C, humidity to 0.1 %, the setpoint to 0.5 °C.

use std::io::Write;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use crate::reading::Reading;

/// The operating mode of a thermostat; the values of the schema's `mode` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThermostatMode {
    /// Heating up to the setpoint.
    Heat,
    /// Cooling down to the setpoint.
    Cool,
    /// Neither; the room follows the ambient temperature.
    Off,
    /// Heating or cooling, whichever the setpoint needs.
    Auto,
}

impl ThermostatMode {
    /// Every mode.
    pub const ALL: [ThermostatMode; 4] =
        [ThermostatMode::Heat, ThermostatMode::Cool, ThermostatMode::Off, ThermostatMode::Auto];

    /// The tag value (`heat`, `cool`, `off`, `auto`).
    pub fn as_str(self) -> &'static str {
        match self {
            ThermostatMode::Heat => "heat",
            ThermostatMode::Cool => "cool",
            ThermostatMode::Off => "off",
            ThermostatMode::Auto => "auto",
        }
    }

    /// The shared tag value, so readings do not allocate a string each.
    fn tag(self) -> Arc<str> {
        static TAGS: OnceLock<[Arc<str>; 4]> = OnceLock::new();
        let tags = TAGS.get_or_init(|| ThermostatMode::ALL.map(|mode| Arc::from(mode.as_str())));
        let mode_idx =
            ThermostatMode::ALL.iter().position(|mode| *mode == self).expect("ALL lists every mode");
        tags[mode_idx].clone()
    }
}

/// One reported measurement of one thermostat, already rounded.
#[derive(Debug, Clone, PartialEq)]
pub struct ThermostatSample {
    /// `t-000`, `t-001`, ...
    pub sensor: Arc<str>,
    /// Room temperature, °C, two decimals.
    pub temp_c: f64,
    /// Relative humidity, %, one decimal, 30 to 60.
    pub humidity: f64,
    /// Target temperature, °C, in steps of 0.5.
    pub setpoint_c: f64,
    /// Operating mode.
    pub mode: ThermostatMode,
}

impl ThermostatSample {
    /// The sample as a reading of [`Schema::thermostat`] (fields `temp_c`, `humidity`,
    /// `setpoint_c`; tag `mode`) at event time `ts_ms`.
    ///
    /// [`Schema::thermostat`]: crate::Schema::thermostat
    pub fn to_reading(&self, ts_ms: i64) -> Reading {
        Reading {
            sensor: self.sensor.clone(),
            ts_ms,
            values: smallvec::smallvec![Some(self.temp_c), Some(self.humidity), Some(self.setpoint_c)],
            tags: smallvec::smallvec![Some(self.mode.tag())],
        }
    }

    /// Appends the sample as one JSON line (with its `\n`) at event time `ts_ms`, in the form
    /// the JSON parser reads: `{"sensor":"t-000","ts":…,"temp_c":21.80,"humidity":45.3,
    /// "setpoint_c":21.5,"mode":"auto"}`. Sensor ids are generated, so need no escaping.
    pub fn write_json_line(&self, ts_ms: i64, out: &mut Vec<u8>) {
        writeln!(
            out,
            "{{\"sensor\":\"{}\",\"ts\":{ts_ms},\"temp_c\":{:.2},\"humidity\":{:.1},\"setpoint_c\":{:.1},\"mode\":\"{}\"}}",
            self.sensor,
            self.temp_c,
            self.humidity,
            self.setpoint_c,
            self.mode.as_str()
        )
        .expect("writing to a Vec cannot fail");
    }
}

/// A set of simulated thermostats sharing one seeded random generator.
#[derive(Debug, Clone)]
pub struct Thermostats {
    rng: fastrand::Rng,
    units: Vec<Thermostat>,
    next_unit_idx: usize,
}

impl Thermostats {
    /// `count` thermostats `t-000`, `t-001`, ...; the same seed gives the same samples.
    pub fn new(count: NonZeroU32, seed: u64) -> Thermostats {
        let mut rng = fastrand::Rng::with_seed(seed);
        let units = (0..count.get()).map(|unit_idx| Thermostat::new(unit_idx, &mut rng)).collect();
        Thermostats { rng, units, next_unit_idx: 0 }
    }

    /// Number of thermostats.
    pub fn count(&self) -> usize {
        self.units.len()
    }

    /// Steps the next thermostat (in turn: `t-000`, `t-001`, ..., then `t-000` again) and
    /// returns what it reports.
    pub fn next_sample(&mut self) -> ThermostatSample {
        let n_units = self.units.len();
        let unit = &mut self.units[self.next_unit_idx];
        self.next_unit_idx = (self.next_unit_idx + 1) % n_units;
        unit.step(&mut self.rng);
        unit.sample()
    }

    /// Steps the next thermostat `n` times (its `n` successive samples, as a device that
    /// buffers readings sends them), then moves on to the one after it.
    pub fn next_samples_of_one(&mut self, n: u32) -> Vec<ThermostatSample> {
        let n_units = self.units.len();
        let unit = &mut self.units[self.next_unit_idx];
        self.next_unit_idx = (self.next_unit_idx + 1) % n_units;
        (0..n)
            .map(|_| {
                unit.step(&mut self.rng);
                unit.sample()
            })
            .collect()
    }

    /// [`next_sample`](Self::next_sample) as a reading at event time `now_ms`.
    pub fn next_reading(&mut self, now_ms: i64) -> Reading {
        self.next_sample().to_reading(now_ms)
    }
}

/// Room temperatures stay within these bounds (°C), well inside the schema's −60..=125.
const TEMP_MIN_C: f64 = 5.0;
const TEMP_MAX_C: f64 = 40.0;
const SETPOINT_MIN_C: f64 = 16.0;
const SETPOINT_MAX_C: f64 = 26.0;
const HUMIDITY_MIN: f64 = 30.0;
const HUMIDITY_MAX: f64 = 60.0;
/// One step in this many changes the mode; about once every 8 minutes at one reading/s.
const MODE_CHANGE_ODDS: u32 = 500;
/// One step in this many moves the setpoint by half a degree.
const SETPOINT_CHANGE_ODDS: u32 = 1000;

/// The state of one simulated room and its thermostat.
#[derive(Debug, Clone)]
struct Thermostat {
    sensor: Arc<str>,
    temp_c: f64,
    humidity: f64,
    setpoint_c: f64,
    /// Where the room drifts without heating or cooling.
    ambient_c: f64,
    mode: ThermostatMode,
}

impl Thermostat {
    fn new(unit_idx: u32, rng: &mut fastrand::Rng) -> Thermostat {
        let setpoint_c = 19.0 + 0.5 * f64::from(rng.u32(0..=8));
        let mode = match rng.u32(0..10) {
            0..=3 => ThermostatMode::Auto,
            4..=6 => ThermostatMode::Heat,
            7..=8 => ThermostatMode::Cool,
            _ => ThermostatMode::Off,
        };
        Thermostat {
            sensor: Arc::from(format!("t-{unit_idx:03}")),
            temp_c: setpoint_c + noise(rng, 1.5),
            humidity: 35.0 + 20.0 * rng.f64(),
            setpoint_c,
            ambient_c: 14.0 + 12.0 * rng.f64(),
            mode,
        }
    }

    fn step(&mut self, rng: &mut fastrand::Rng) {
        if rng.u32(0..MODE_CHANGE_ODDS) == 0 {
            let others: Vec<ThermostatMode> =
                ThermostatMode::ALL.into_iter().filter(|mode| *mode != self.mode).collect();
            self.mode = others[rng.usize(0..others.len())];
        }
        if rng.u32(0..SETPOINT_CHANGE_ODDS) == 0 {
            let change = if rng.bool() { 0.5 } else { -0.5 };
            self.setpoint_c = (self.setpoint_c + change).clamp(SETPOINT_MIN_C, SETPOINT_MAX_C);
        }
        self.ambient_c = (self.ambient_c + noise(rng, 0.02)).clamp(10.0, 32.0);
        let target_c = match self.mode {
            ThermostatMode::Heat => self.setpoint_c.max(self.ambient_c),
            ThermostatMode::Cool => self.setpoint_c.min(self.ambient_c),
            ThermostatMode::Auto => self.setpoint_c,
            ThermostatMode::Off => self.ambient_c,
        };
        self.temp_c += 0.02 * (target_c - self.temp_c) + noise(rng, 0.05);
        self.temp_c = self.temp_c.clamp(TEMP_MIN_C, TEMP_MAX_C);
        self.humidity += 0.005 * (45.0 - self.humidity) + noise(rng, 0.3);
        self.humidity = self.humidity.clamp(HUMIDITY_MIN, HUMIDITY_MAX);
    }

    fn sample(&self) -> ThermostatSample {
        ThermostatSample {
            sensor: self.sensor.clone(),
            temp_c: round_to(self.temp_c, 100.0),
            humidity: round_to(self.humidity, 10.0),
            setpoint_c: self.setpoint_c,
            mode: self.mode,
        }
    }
}

/// Uniform noise in `-amplitude..amplitude`.
fn noise(rng: &mut fastrand::Rng, amplitude: f64) -> f64 {
    (rng.f64() * 2.0 - 1.0) * amplitude
}

/// Rounds to `1 / per_unit` (100.0: two decimals). Dividing the rounded integer gives the
/// same f64 a parser gets from the printed decimal.
fn round_to(value: f64, per_unit: f64) -> f64 {
    (value * per_unit).round() / per_unit
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::parse::{Format, Limits, LineParser};
    use crate::schema::Schema;

    fn thermostats(count: u32, seed: u64) -> Thermostats {
        Thermostats::new(NonZeroU32::new(count).unwrap(), seed)
    }

    #[test]
    fn thermostats_repeat_their_samples_for_the_same_seed() {
        let mut first = thermostats(7, 42);
        let mut second = thermostats(7, 42);
        let mut other_seed = thermostats(7, 43);
        let first_run: Vec<ThermostatSample> = (0..5_000).map(|_| first.next_sample()).collect();
        let second_run: Vec<ThermostatSample> = (0..5_000).map(|_| second.next_sample()).collect();
        let other_run: Vec<ThermostatSample> = (0..5_000).map(|_| other_seed.next_sample()).collect();
        assert_eq!(first_run, second_run);
        assert_ne!(first_run, other_run);
    }

    #[test]
    fn thermostats_take_turns_in_id_order() {
        let mut set = thermostats(3, 1);
        let ids: Vec<String> = (0..7).map(|_| set.next_sample().sensor.to_string()).collect();
        assert_eq!(ids, ["t-000", "t-001", "t-002", "t-000", "t-001", "t-002", "t-000"]);
        assert_eq!(set.count(), 3);
    }

    #[test]
    fn thermostat_values_stay_plausible_and_rounded_over_a_long_run() {
        let mut set = thermostats(10, 9);
        let mut previous: HashMap<Arc<str>, ThermostatSample> = HashMap::new();
        let mut mode_changes = 0;
        let mut modes_seen = std::collections::HashSet::new();
        for _ in 0..200_000 {
            let sample = set.next_sample();
            assert!((TEMP_MIN_C..=TEMP_MAX_C).contains(&sample.temp_c), "{sample:?}");
            assert!((HUMIDITY_MIN..=HUMIDITY_MAX).contains(&sample.humidity), "{sample:?}");
            assert!((SETPOINT_MIN_C..=SETPOINT_MAX_C).contains(&sample.setpoint_c), "{sample:?}");
            assert!(((sample.temp_c * 100.0).round() - sample.temp_c * 100.0).abs() < 1e-6);
            assert!(((sample.humidity * 10.0).round() - sample.humidity * 10.0).abs() < 1e-6);
            assert!(((sample.setpoint_c * 2.0).round() - sample.setpoint_c * 2.0).abs() < 1e-9);
            if let Some(before) = previous.get(&sample.sensor) {
                assert!((sample.temp_c - before.temp_c).abs() < 0.5, "jump {before:?} -> {sample:?}");
                assert!((sample.humidity - before.humidity).abs() < 1.0, "jump {before:?} -> {sample:?}");
                if sample.mode != before.mode {
                    mode_changes += 1;
                }
            }
            modes_seen.insert(sample.mode);
            previous.insert(sample.sensor.clone(), sample);
        }
        // 20,000 steps per thermostat at odds of 1 in 500: about 400 changes in all.
        assert!((200..=600).contains(&mode_changes), "{mode_changes} mode changes");
        assert_eq!(modes_seen.len(), 4);
    }

    #[test]
    fn thermostat_room_settles_near_its_setpoint_in_auto_mode() {
        let mut unit = Thermostat::new(0, &mut fastrand::Rng::with_seed(3));
        unit.mode = ThermostatMode::Auto;
        unit.temp_c = 12.0;
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..400 {
            unit.step(&mut rng);
            // Keep the mode and setpoint for this test.
            unit.mode = ThermostatMode::Auto;
        }
        assert!((unit.temp_c - unit.setpoint_c).abs() < 1.0, "{unit:?}");
    }

    #[test]
    fn thermostat_json_line_parses_back_to_the_same_reading() {
        let parser = LineParser::new(Format::Json, Arc::new(Schema::thermostat()), Limits::default());
        let mut set = thermostats(25, 5);
        let ts_ms = 1_700_000_000_123;
        for _ in 0..1_000 {
            let sample = set.next_sample();
            let mut line = Vec::new();
            sample.write_json_line(ts_ms, &mut line);
            assert_eq!(line.last(), Some(&b'\n'));
            let parsed = parser.parse(&line[..line.len() - 1], ts_ms).unwrap();
            let reading = sample.to_reading(ts_ms);
            assert_eq!(&*parsed.sensor, &*reading.sensor);
            assert_eq!(
                (parsed.ts_ms, &parsed.values, &parsed.tags),
                (reading.ts_ms, &reading.values, &reading.tags)
            );
        }
    }

    #[test]
    fn thermostat_json_line_has_the_documented_shape() {
        let sample = ThermostatSample {
            sensor: Arc::from("t-004"),
            temp_c: 21.8,
            humidity: 45.0,
            setpoint_c: 21.5,
            mode: ThermostatMode::Heat,
        };
        let mut line = Vec::new();
        sample.write_json_line(1_700_000_000_000, &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"sensor\":\"t-004\",\"ts\":1700000000000,\"temp_c\":21.80,\"humidity\":45.0,\"setpoint_c\":21.5,\"mode\":\"heat\"}\n"
        );
    }
}
