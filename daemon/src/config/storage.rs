//! `[storage]`: the sled cache and the disk budget of log and outbox (size, full-store policy,
//! ttl, free-space guard).

use std::time::Duration;

use serde::Deserialize;

use crate::config::{invalid, within, ConfigError, MAX_TTL, TICK};
use crate::engine::downsample::Shapes;
use crate::storage::{BudgetConfig, Policy, DEFAULT_DOWNSAMPLE_LEVELS};

/// Least `storage.dead_letter_max_bytes`: room for a few records.
const DEAD_LETTER_MIN_BYTES: u64 = 4096;
/// Most `storage.dead_letter_max_bytes`: 16 GiB.
const DEAD_LETTER_MAX_MAX_BYTES: u64 = 1 << 34;

/// `[storage]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStorage {
    /// sled cache, bytes.
    pub cache_capacity: u64,
    /// Disk budget of log + outbox, bytes (0: none).
    pub max_bytes: u64,
    /// `downsample`, `drop_oldest` or `reject_new`.
    pub policy: String,
    /// Drop outbox records older than this (none: keep until delivered).
    #[serde(with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Refuse readings when the file system has less free space, bytes (0: no check).
    pub min_free_bytes: u64,
    /// Most bytes of dead letters kept; the oldest are deleted past it.
    pub dead_letter_max_bytes: u64,
    /// The resolutions `downsample` merges into, finest first (`"1h"`, `"1d"`).
    pub downsample_levels: Vec<String>,
}

impl Default for RawStorage {
    fn default() -> RawStorage {
        RawStorage {
            cache_capacity: 4 * 1024 * 1024,
            max_bytes: 0,
            policy: "downsample".to_owned(),
            ttl: None,
            min_free_bytes: 64 * 1024 * 1024,
            dead_letter_max_bytes: crate::storage::DEAD_LETTER_MAX_BYTES,
            downsample_levels: DEFAULT_DOWNSAMPLE_LEVELS
                .iter()
                .map(|level| humantime::format_duration(*level).to_string())
                .collect(),
        }
    }
}

impl RawStorage {
    /// Validates the sled cache size.
    pub(crate) fn cache_capacity(&self) -> Result<u64, ConfigError> {
        // At most 1 GiB: sled keeps this much in memory, far past the unit's MemoryMax.
        if !(256 * 1024..=1 << 30).contains(&self.cache_capacity) {
            return Err(invalid("storage.cache_capacity", "must be between 262144 and 1073741824 bytes"));
        }
        Ok(self.cache_capacity)
    }

    /// Validates the budget keys.
    pub(crate) fn budget(&self) -> Result<BudgetConfig, ConfigError> {
        let policy = match self.policy.as_str() {
            "downsample" => Policy::Downsample,
            "drop_oldest" => Policy::DropOldest,
            "reject_new" => Policy::RejectNew,
            other => {
                return Err(invalid(
                    "storage.policy",
                    format!("`{other}` is not one of: downsample, drop_oldest, reject_new"),
                ))
            }
        };
        let downsample_levels = self.downsample_levels()?;
        if self.max_bytes != 0 && self.max_bytes < 64 * 1024 {
            return Err(invalid("storage.max_bytes", "must be 0 (no budget) or at least 65536 bytes"));
        }
        if self.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(invalid("storage.ttl", "must be greater than zero (leave it out to keep records)"));
        }
        if let Some(ttl) = self.ttl {
            within("storage.ttl", ttl, TICK, MAX_TTL)?;
        }
        if !(DEAD_LETTER_MIN_BYTES..=DEAD_LETTER_MAX_MAX_BYTES).contains(&self.dead_letter_max_bytes) {
            return Err(invalid(
                "storage.dead_letter_max_bytes",
                format!("must be between {DEAD_LETTER_MIN_BYTES} and {DEAD_LETTER_MAX_MAX_BYTES} bytes"),
            ));
        }
        Ok(BudgetConfig {
            max_bytes: (self.max_bytes != 0).then_some(self.max_bytes),
            policy,
            ttl: self.ttl,
            min_free_bytes: self.min_free_bytes,
            dead_letter_max_bytes: self.dead_letter_max_bytes,
            downsample_levels,
            shapes: Shapes::default(),
        })
    }

    /// `storage.downsample_levels`: 1 to 4 whole minutes from 1 minute to 366 days, each a
    /// multiple of the one before (so that a merged record fits inside the next level's
    /// bucket).
    fn downsample_levels(&self) -> Result<Vec<Duration>, ConfigError> {
        const KEY: &str = "storage.downsample_levels";
        let levels = self
            .downsample_levels
            .iter()
            .map(|level| {
                humantime::parse_duration(level)
                    .map_err(|error| invalid(KEY, format!("`{level}` is not a duration: {error}")))
            })
            .collect::<Result<Vec<Duration>, ConfigError>>()?;
        if levels.is_empty() || levels.len() > MAX_DOWNSAMPLE_LEVELS {
            return Err(invalid(
                KEY,
                format!("must list 1 to {MAX_DOWNSAMPLE_LEVELS} durations, finest first"),
            ));
        }
        for (idx, level) in levels.iter().enumerate() {
            within(KEY, *level, Duration::from_secs(60), Duration::from_secs(366 * 86_400))?;
            if level.as_millis() % 60_000 != 0 {
                return Err(invalid(
                    KEY,
                    format!("{} is not a whole number of minutes", humantime::format_duration(*level)),
                ));
            }
            if let Some(previous) = idx.checked_sub(1).map(|previous| levels[previous]) {
                if *level <= previous || level.as_millis() % previous.as_millis() != 0 {
                    return Err(invalid(
                        KEY,
                        format!(
                            "{} must be a multiple of the level before it ({})",
                            humantime::format_duration(*level),
                            humantime::format_duration(previous)
                        ),
                    ));
                }
            }
        }
        Ok(levels)
    }
}

/// Most `storage.downsample_levels`.
const MAX_DOWNSAMPLE_LEVELS: usize = 4;
