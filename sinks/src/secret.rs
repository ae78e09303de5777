//! The secret type of the uplinks' settings, which lives in `eddy_common`: this re-export keeps
//! the `crate::secret::Secret` import of the HTTP settings as it is.

pub(crate) use eddy_common::Secret;
