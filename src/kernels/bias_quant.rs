//! Host wrapper of `shaders/bias_quant.wgsl`: the simulation adds the bias the integer model
//! adds (`round(b / (s_x s_w[c]))` codes, see `crate::convert`), instead of the f32 bias.
//! Recorded once per layer, after the weight observer (it reads the current scales).

use super::expect_len;
use crate::error::{Result, WqatError};
use crate::gpu::{grid_1d, Dispatch, GpuContext, GpuTensor, PipelineKey};
use crate::quant::QStateLayout;

super::kernel_params! {
    pub(crate) struct Params for ["bias_quant"] {
        c: u32,
        w_channels: u32,
        bn: u32,
        _pad0: u32,
        eps: f32,
        _pad: [f32; 3],
    }
}

/// The BN statistics of a conv-BN block (eval mode).
#[derive(Debug, Clone, Copy)]
pub struct BnTerms<'a> {
    pub gamma: &'a GpuTensor,
    pub running_mean: &'a GpuTensor,
    pub running_var: &'a GpuTensor,
    pub eps: f32,
}

/// Channels of a quantizer state tensor.
fn state_channels(t: &GpuTensor, what: &str) -> Result<usize> {
    let n = t.len();
    if n < QStateLayout::HEADER + 5 || !(n - QStateLayout::HEADER).is_multiple_of(5) {
        return Err(WqatError::shape(format!("bias_quant: {what} state has {n} values, expected 4 + 5 C")));
    }
    Ok((n - QStateLayout::HEADER) / 5)
}

/// Records `out = b_q(bias)` (no `bn`), or the eval-mode `out = beta + b_q(b_eff) - b_eff`
/// of a conv-BN block (`bias` is then beta). `x_state`: the layer input's per-tensor
/// quantizer; `w_state`: the weight quantizer (per tensor or one channel per output).
pub fn quantize_bias(
    ctx: &GpuContext,
    bias: &GpuTensor,
    bn: Option<BnTerms<'_>>,
    x_state: &GpuTensor,
    w_state: &GpuTensor,
    out: &GpuTensor,
) -> Result<Dispatch> {
    let c = bias.len();
    if c == 0 {
        return Err(WqatError::shape("bias_quant: empty bias"));
    }
    expect_len(out, c, "bias_quant: out")?;
    if state_channels(x_state, "x")? != 1 {
        return Err(WqatError::shape("bias_quant: the input quantizer must be per tensor"));
    }
    let wc = state_channels(w_state, "w")?;
    if wc != 1 && wc != c {
        return Err(WqatError::shape(format!("bias_quant: weight quantizer has {wc} channels for {c} outputs")));
    }
    let (g, m, v, eps) = match bn {
        Some(t) => {
            expect_len(t.gamma, c, "bias_quant: gamma")?;
            expect_len(t.running_mean, c, "bias_quant: running_mean")?;
            expect_len(t.running_var, c, "bias_quant: running_var")?;
            if t.eps.is_nan() || t.eps <= 0.0 {
                return Err(WqatError::invalid(format!("bias_quant: eps {} must be > 0", t.eps)));
            }
            (t.gamma, t.running_mean, t.running_var, t.eps)
        }
        None => (bias, bias, bias, 1.0),
    };
    let p = Params { c: c as u32, w_channels: wc as u32, bn: bn.is_some() as u32, _pad0: 0, eps, _pad: [0.0; 3] };
    let key = PipelineKey::new("bias_quant", "quantize_bias");
    super::launch(ctx, &key, &p, &[bias, g, m, v, x_state, w_state, out], grid_1d(c, 64))
}
