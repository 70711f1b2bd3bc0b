// The uniform of every conv kernel (conv.wgsl, conv_backward.wgsl, conv_wgrad.wgsl,
// conv_wgrad_reduce.wgsl, conv_bias_grad.wgsl), mirrored by `ConvParams` in
// src/kernels/conv.rs (tests/shaders_valid.rs checks the layouts agree). Geometry of
// NCHW conv2d with weights [Cout, Cin/groups, KH, KW]; the implicit GEMM's sizes per group;
// the split-K chunking of the weight gradient; flag bits below; code ranges of X and W.
struct ConvParams {
    n: u32, c_in: u32, h: u32, w: u32,
    c_out: u32, oh: u32, ow: u32, groups: u32,
    kh: u32, kw: u32, stride_h: u32, stride_w: u32,
    pad_h: u32, pad_w: u32, dil_h: u32, dil_w: u32,
    cin_g: u32, cout_g: u32, gemm_m: u32, gemm_n: u32,
    gemm_k: u32, k_chunk: u32, splits: u32, flags: u32,
    x_qmin: f32, x_qmax: f32, w_qmin: f32, w_qmax: f32,
}

// Bits of ConvParams.flags (uniform branches rather than override constants, so that one
// pipeline per tile shape serves every combination); the host's constants in conv.rs.
const FQ_X: u32 = 1u;          // fake-quantize X with its per-tensor state
const FQ_W: u32 = 2u;          // fake-quantize W with its state
const HAS_BIAS: u32 = 4u;      // forward: add the bias
const RELU: u32 = 8u;          // forward: fused ReLU
const MASK: u32 = 16u;         // backward: multiply by the STE mask
const ACCUM: u32 = 32u;        // backward data: dX += result instead of dX = result
const W_PER_TENSOR: u32 = 64u; // W's state has one channel rather than one per output channel
