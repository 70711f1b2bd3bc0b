//! aarch64 micro-kernels (compiled only on aarch64): 2 rows x 4 output channels.
//!
//! * NEON: x and w widened to i16 when packed; `vmlal_s16` / `vmlal_high_s16` multiply
//!   into i32 lanes (products at most 255 * 128, exact).
//! * NEON + dotprod: x is stored as `x ^ 0x80 = x - 128` (i8) and `sdot` sums four i8*i8
//!   products per i32 lane; the caller adds back `128 * sum(w)`. `sdot` is emitted as a raw
//!   instruction word because `vdotq_s32` is not stable yet.

use std::arch::aarch64::*;

/// `xa`, `xb`: `kp` i16; `w`: 4 rows of `kp` i16 at stride `ws`; `kp` a multiple of 16.
///
/// # Safety
/// Pointers valid for the lengths above.
#[target_feature(enable = "neon")]
pub unsafe fn mk_neon(xa: *const i16, xb: *const i16, w: *const i16, ws: usize, kp: usize) -> [[i32; 4]; 2] {
    let mut acc = [vdupq_n_s32(0); 8];
    let mut k = 0;
    while k < kp {
        let va = vld1q_s16(xa.add(k));
        let vb = vld1q_s16(xb.add(k));
        for j in 0..4 {
            let wv = vld1q_s16(w.add(j * ws + k));
            acc[j] = vmlal_s16(acc[j], vget_low_s16(va), vget_low_s16(wv));
            acc[j] = vmlal_high_s16(acc[j], va, wv);
            acc[4 + j] = vmlal_s16(acc[4 + j], vget_low_s16(vb), vget_low_s16(wv));
            acc[4 + j] = vmlal_high_s16(acc[4 + j], vb, wv);
        }
        k += 8;
    }
    let mut out = [[0i32; 4]; 2];
    for j in 0..4 {
        out[0][j] = vaddvq_s32(acc[j]);
        out[1][j] = vaddvq_s32(acc[4 + j]);
    }
    out
}

/// `acc + sdot(a, b)`: four i8*i8 products summed into each i32 lane.
#[inline(always)]
unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    // sdot v2.4s, v0.16b, v1.16b
    std::arch::asm!(".inst 0x4e819402", in("v0") a, in("v1") b, inout("v2") r, options(pure, nomem, nostack));
    r
}

/// `xa`, `xb`: `kp` i8 holding `x - 128`; `w`: 4 rows of `kp` i8 at stride `ws`; `kp` a
/// multiple of 16. Returns `sum (x - 128) * w`.
///
/// # Safety
/// The CPU must have the dotprod extension; pointers valid for the lengths above.
#[target_feature(enable = "neon")]
pub unsafe fn mk_neon_dot(xa: *const i8, xb: *const i8, w: *const i8, ws: usize, kp: usize) -> [[i32; 4]; 2] {
    let mut acc = [vdupq_n_s32(0); 8];
    let mut k = 0;
    while k < kp {
        let va = vld1q_s8(xa.add(k));
        let vb = vld1q_s8(xb.add(k));
        for j in 0..4 {
            let wv = vld1q_s8(w.add(j * ws + k));
            acc[j] = sdot(acc[j], va, wv);
            acc[4 + j] = sdot(acc[4 + j], vb, wv);
        }
        k += 16;
    }
    let mut out = [[0i32; 4]; 2];
    for j in 0..4 {
        out[0][j] = vaddvq_s32(acc[j]);
        out[1][j] = vaddvq_s32(acc[4 + j]);
    }
    out
}
