//! The sources' reconnection backoff, which lives in `eddy_common`: this re-export keeps the
//! `crate::backoff::Backoff` imports of the serial and MQTT sources as they are.

pub(crate) use eddy_common::Backoff;
