// GELU, erf form (PyTorch's default nn.GELU(), approximate='none'): the transformer MLP's
// activation, kept in fp32 by the quantization recipe (no fake-quant here).
//
// gelu_forward:  y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
// gelu_backward: dx = dy * (Phi(x) + x * phi(x)), from the forward INPUT x.
// Phi is evaluated as erfc(-x / sqrt 2) / 2 (common/erf.wgsl says why and how accurate), not
// as 1 + erf: for x << 0 the product stays relatively accurate where 1 + erf would cancel.
// For |x| >= 16, x * phi(x) < 1e-54 is 0 in f32 and is taken as 0, so +-Inf inputs give
// gradients 1 / 0 rather than Inf * 0. NaN propagates. Buffers may not alias.

// #include common/index.wgsl
// #include common/erf.wgsl

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

// Bindings: 1 x, 2 y.
@compute @workgroup_size(256)
fn gelu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    y[i] = gelu(x[i]);
}

// Bindings: 1 x (forward input), 2 dy, 3 dx.
@compute @workgroup_size(256)
fn gelu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let v = x[i];
    let xpdf = select(v * normal_pdf(v), 0.0, abs(v) >= 16.0);
    dx[i] = dy[i] * (normal_cdf(v) + xpdf);
}
