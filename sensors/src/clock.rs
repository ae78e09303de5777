//! The wall clock, which lives in `eddy_common`: this re-export keeps the
//! `crate::clock::wall_clock_ms` imports of the sources and the simulator as they are.

pub(crate) use eddy_common::wall_clock_ms;
