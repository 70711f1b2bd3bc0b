//! Sub-8-bit weight codes packed several per byte ([`PackedWeights`]).
//!
//! Packing (the in-memory layout and the `{n}.weight_packed` tensor of the model file, see
//! [`super::format`]): code `i` occupies a field of `field_bits` bits, `per_byte = 8 /
//! field_bits` fields to a byte, field `i % per_byte` of byte `i / per_byte`, the lowest bits
//! first (so 4-bit weights are two's-complement nibbles, low nibble first). The field width
//! is the weight bit width rounded up to a power of two: 2 bits for 2-bit weights (four codes
//! per byte), 4 bits for 3- and 4-bit weights (two codes per byte), 8 bits for 5..=8-bit
//! weights (one code per byte, the plain int8 layout). A power-of-two field never straddles a
//! byte (or a 32-bit word), so unpacking is a shift and a sign extension. Unused fields of the
//! last byte are zero.

use crate::error::{Result, WqatError};
use std::borrow::Cow;

/// Signed weight codes of `bits` bits, packed (see the module header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedWeights {
    bits: u32,
    len: usize,
    data: Vec<u8>,
}

/// The storage field width of `bits`-bit codes: 2, 4 or 8.
pub fn field_bits(bits: u32) -> u32 {
    match bits {
        0..=2 => 2,
        3..=4 => 4,
        _ => 8,
    }
}

/// Bytes that `len` codes of `bits` bits take.
pub fn packed_len(bits: u32, len: usize) -> usize {
    let per = (8 / field_bits(bits)) as usize;
    len.div_ceil(per)
}

impl PackedWeights {
    /// Packs codes of `bits` (2..=8) bits; each must lie in `[-2^(bits-1), 2^(bits-1) - 1]`.
    pub fn pack(codes: &[i8], bits: u32) -> Result<PackedWeights> {
        if !(2..=8).contains(&bits) {
            return Err(WqatError::invalid(format!("packed weights: {bits} bits (2..=8)")));
        }
        let (lo, hi) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
        if let Some(c) = codes.iter().find(|&&c| !(lo..=hi).contains(&(c as i32))) {
            return Err(WqatError::invalid(format!("packed weights: code {c} outside [{lo}, {hi}] ({bits} bits)")));
        }
        let f = field_bits(bits);
        let per = (8 / f) as usize;
        let mask = ((1u32 << f) - 1) as u8;
        let mut data = vec![0u8; packed_len(bits, codes.len())];
        for (i, &c) in codes.iter().enumerate() {
            data[i / per] |= ((c as u8) & mask) << ((i % per) as u32 * f);
        }
        Ok(PackedWeights { bits, len: codes.len(), data })
    }

    /// Packed bytes read from a file: `data` must hold exactly [`packed_len`] bytes, unused
    /// fields zero, and every code in the `bits`-bit range `[qmin, qmax]` (the layer's).
    pub fn from_packed(bits: u32, len: usize, data: Vec<u8>, qmin: i32, qmax: i32) -> Result<PackedWeights> {
        if !(2..=8).contains(&bits) {
            return Err(WqatError::invalid(format!("packed weights: {bits} bits (2..=8)")));
        }
        let want = packed_len(bits, len);
        if data.len() != want {
            return Err(WqatError::invalid(format!(
                "packed weights: {} bytes for {len} codes of {bits} bits (expected {want})",
                data.len()
            )));
        }
        let p = PackedWeights { bits, len, data };
        let per = (8 / field_bits(bits)) as usize;
        let used = len - (want.saturating_sub(1)) * per;
        if want > 0 && used < per && p.data[want - 1] >> (used as u32 * field_bits(bits)) != 0 {
            return Err(WqatError::invalid("packed weights: padding bits of the last byte are not zero"));
        }
        if let Some(c) = p.iter().find(|&c| !(qmin..=qmax).contains(&(c as i32))) {
            return Err(WqatError::invalid(format!("packed weights: code {c} outside [{qmin}, {qmax}]")));
        }
        Ok(p)
    }

    /// Weight bit width (2..=8).
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Storage field width (2, 4 or 8).
    pub fn field_bits(&self) -> u32 {
        field_bits(self.bits)
    }
    /// Whether more than one code shares a byte.
    pub fn is_packed(&self) -> bool {
        self.field_bits() < 8
    }
    /// Number of codes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No codes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The packed bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// Code `i` (sign-extended).
    #[inline]
    pub fn get(&self, i: usize) -> i8 {
        let f = self.field_bits();
        let per = (8 / f) as usize;
        let b = self.data[i / per] << (8 - f - (i % per) as u32 * f);
        (b as i8) >> (8 - f)
    }
    /// Codes `start .. start + out.len()` into `out` (sign-extended; one output channel's row
    /// at a time in the scalar kernels). Panics past the end, like slice indexing.
    pub fn unpack_into(&self, start: usize, out: &mut [i8]) {
        assert!(start + out.len() <= self.len, "packed weights: codes {start}+{} of {}", out.len(), self.len);
        if !self.is_packed() {
            out.copy_from_slice(bytemuck::cast_slice(&self.data[start..start + out.len()]));
            return;
        }
        let f = self.field_bits();
        let per = (8 / f) as usize;
        for (j, o) in out.iter_mut().enumerate() {
            let i = start + j;
            *o = ((self.data[i / per] << (8 - f - (i % per) as u32 * f)) as i8) >> (8 - f);
        }
    }
    /// The codes in order.
    pub fn iter(&self) -> impl Iterator<Item = i8> + '_ {
        (0..self.len).map(|i| self.get(i))
    }
    /// All codes as int8 (borrowed when stored one per byte).
    pub fn codes(&self) -> Cow<'_, [i8]> {
        if self.is_packed() {
            let f = self.field_bits();
            let per = (8 / f) as usize;
            let mut out = Vec::with_capacity(self.data.len() * per);
            for &b in &self.data {
                for j in 0..per as u32 {
                    out.push(((b << (8 - f - j * f)) as i8) >> (8 - f));
                }
            }
            out.truncate(self.len);
            Cow::Owned(out)
        } else {
            Cow::Borrowed(bytemuck::cast_slice(&self.data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_code() {
        for bits in 2..=8u32 {
            let (lo, hi) = (-(1i32 << (bits - 1)), (1i32 << (bits - 1)) - 1);
            // Every code at every position of a byte, odd lengths (partial last byte).
            let all: Vec<i8> = (lo..=hi).map(|c| c as i8).collect();
            for len in [0, 1, 3, 5, 7, all.len() * 4 + 1] {
                let codes: Vec<i8> = (0..len).map(|i| all[(i * 7 + i / all.len()) % all.len()]).collect();
                let p = PackedWeights::pack(&codes, bits).unwrap();
                assert_eq!(p.data().len(), packed_len(bits, len), "{bits} bits, {len}");
                assert_eq!(p.codes().as_ref(), &codes[..], "{bits} bits, {len}");
                let q = PackedWeights::from_packed(bits, len, p.data().to_vec(), lo, hi).unwrap();
                assert_eq!(q, p);
            }
            for (pos, &c) in all.iter().enumerate() {
                let mut codes = vec![0i8; 8];
                codes[pos % 8] = c;
                assert_eq!(PackedWeights::pack(&codes, bits).unwrap().codes().as_ref(), &codes[..]);
            }
            assert!(PackedWeights::pack(&[(hi + 1) as i8], bits).is_err() || bits == 8);
        }
        // Nibbles, low first.
        assert_eq!(PackedWeights::pack(&[1, -1, -8], 4).unwrap().data(), &[0xF1, 0x08]);
        assert_eq!(PackedWeights::pack(&[1, -1, -2, 0, 1], 2).unwrap().data(), &[0b00_10_11_01, 0b01]);
    }

    #[test]
    fn unpack_rows() {
        for bits in [2u32, 3, 4, 8] {
            let lo = -(1i32 << (bits - 1));
            let codes: Vec<i8> = (0..37).map(|i| (lo + (i * 5 % (1 << bits))) as i8).collect();
            let p = PackedWeights::pack(&codes, bits).unwrap();
            for (start, len) in [(0, 37), (1, 5), (3, 9), (36, 1), (37, 0), (7, 30)] {
                let mut out = vec![0i8; len];
                p.unpack_into(start, &mut out);
                assert_eq!(out, &codes[start..start + len], "{bits} bits, {start}+{len}");
            }
        }
    }

    #[test]
    fn bad_packed_bytes() {
        assert!(PackedWeights::from_packed(4, 5, vec![0; 2], -8, 7).is_err(), "short");
        assert!(PackedWeights::from_packed(4, 5, vec![0; 4], -8, 7).is_err(), "long");
        assert!(PackedWeights::from_packed(4, 5, vec![0, 0, 0x10], -8, 7).is_err(), "padding");
        assert!(PackedWeights::from_packed(4, 2, vec![0x08], -7, 7).is_err(), "-8 outside a restricted range");
        assert!(PackedWeights::from_packed(3, 2, vec![0xC3], -4, 3).is_ok(), "3 and -4");
        assert!(PackedWeights::from_packed(3, 1, vec![0x07], -4, 3).is_err(), "7 is not a 3-bit code");
        assert!(PackedWeights::from_packed(3, 1, vec![0x08], -4, 3).is_err(), "-8 is not a 3-bit code");
        assert!(PackedWeights::from_packed(9, 1, vec![0], -4, 3).is_err());
    }
}
