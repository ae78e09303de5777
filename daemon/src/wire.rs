//! postcard's encoding written by hand, for the stored values eddy writes most: a log chunk
//! (`storage/columns.rs`, `storage/stored.rs`) and a sensor's window, micro-batch and clock
//! state (`engine/state.rs`). Each writer produces the same bytes as `postcard` over the derived
//! `Serialize`, which stays the reference a property test compares them with, without a serde
//! call per value.

/// An unsigned integer (any of postcard's `u16`..`u64` and lengths) as LEB128.
#[inline]
pub(crate) fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // The low seven bits, with the continuation bit: the cast keeps exactly them.
        #[allow(clippy::cast_possible_truncation)]
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    #[allow(clippy::cast_possible_truncation)]
    out.push(value as u8);
}

/// A signed integer, zigzag then LEB128.
#[inline]
pub(crate) fn zigzag(out: &mut Vec<u8>, value: i64) {
    #[allow(clippy::cast_sign_loss)]
    varint(out, ((value << 1) ^ (value >> 63)) as u64);
}

/// A length (`usize`).
#[inline]
pub(crate) fn len(out: &mut Vec<u8>, len: usize) {
    varint(out, u64::try_from(len).unwrap_or(u64::MAX));
}

/// A string or byte string: its length, then its bytes.
#[inline]
pub(crate) fn bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// A float: its bits, little-endian.
#[inline]
pub(crate) fn f64(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_bits().to_le_bytes());
}

/// An `Option`: 0 for none; 1, then the value as `some` writes it.
#[inline]
pub(crate) fn option<T>(out: &mut Vec<u8>, value: Option<T>, some: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            some(out, value);
        }
    }
}
