// Optimizers over flat parameter buffers (PyTorch semantics) and gradient-norm clipping.
//
// Hyper buffer (f32, rewritten by the host each step with queue.write_buffer):
//   [0] learning rate, [1] step count t (1-based, exact up to 2^24), [2..4) unused.
// Norm buffer (f32, see src/kernels/optim.rs `NormLayout`):
//   [0] clip factor min(1, max_norm / (sqrt(total) + 1e-6)), [1] sqrt(total), [2] total,
//   [3] unused, [4 + k] sum of squares of gradient tensor k (written by `sumsq_final`).
// Metrics buffer (u32, see shaders/loss.wgsl): [3] is the non-finite flag word.
//
// Override constants: CLIP (scale g by norm[0]), SKIP_NONFINITE (leave p and state
// unchanged when bit 0 of metrics[3], the non-finite flag, is set), NESTEROV (SGD).
//
// Bindings (each entry point uses 1..k contiguously):
//   sumsq_partial: 1 g, 2 partials        sumsq_final: 1 partials, 2 norm
//   clip_finalize: 1 norm
//   sgd_step:   1 p, 2 g, 3 hyper, 4 metrics, 5 norm, 6 momentum buffer
//   adamw_bias: 1 bias [4] (written), 2 hyper
//   adamw_step: 1 p, 2 g, 3 hyper, 4 metrics, 5 norm, 6 exp_avg, 7 exp_avg_sq, 8 bias
// AdamW is two dispatches: `adamw_bias` (one invocation) writes bias = [1 - beta1^t,
// 1 - beta2^t] from the hyper step count, then `adamw_step` reads it (computing the bias
// corrections per element triples the step's cost on lavapipe, and a workgroup barrier to
// share them costs as much).

struct Params {
    n: u32,       // elements (steps, sumsq_partial), partial count (sumsq_final), slots (clip)
    slot: u32,    // sumsq_final: norm slot k
    stride: u32,  // sumsq_partial: invocations in the grid (grid-stride loop)
    _pad: u32,
    wd: f32,
    momentum: f32,  // SGD
    beta1: f32,     // AdamW
    beta2: f32,     // AdamW
    eps: f32,       // AdamW
    max_norm: f32,  // clip_finalize
    _pad2: vec2<f32>,
}

override CLIP: bool = false;
override SKIP_NONFINITE: bool = false;
override NESTEROV: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> b1: array<f32>;
@group(0) @binding(2) var<storage, read_write> b2: array<f32>;
@group(0) @binding(3) var<storage, read> hyper: array<f32>;
@group(0) @binding(4) var<storage, read> metrics: array<u32>;
@group(0) @binding(5) var<storage, read> norm: array<f32>;
@group(0) @binding(6) var<storage, read_write> st0: array<f32>;
@group(0) @binding(7) var<storage, read_write> st1: array<f32>;
@group(0) @binding(8) var<storage, read> bias: array<f32>;

const WG: u32 = 256u;
const NORM_SLOTS: u32 = 4u;

var<workgroup> sh: array<f32, WG>;

fn tree_sum(lid: u32, v: f32) -> f32 {
    sh[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { sh[lid] += sh[lid + s]; }
        workgroupBarrier();
    }
    return sh[0];
}

// Stage 1: workgroup w writes the sum of g^2 over its grid-stride share to partials[w].
@compute @workgroup_size(256)
fn sumsq_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = gid.x; i < p.n; i += p.stride) {
        let g = b1[i];
        acc += g * g;
    }
    let total = tree_sum(lid, acc);
    if (lid == 0u) { b2[wid.x] = total; }
}

// Stage 2 (one workgroup): norm[4 + slot] = sum of partials[0..n) (written, not added).
@compute @workgroup_size(256)
fn sumsq_final(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        acc += b1[i];
    }
    let total = tree_sum(lid, acc);
    if (lid == 0u) { b2[NORM_SLOTS + p.slot] = total; }
}

// One invocation: total = sum of slots 0..n in order, then the clip factor.
@compute @workgroup_size(1)
fn clip_finalize() {
    var total = 0.0;
    for (var k = 0u; k < p.n; k++) {
        total += b1[NORM_SLOTS + k];
    }
    let tn = sqrt(total);
    b1[0] = min(1.0, p.max_norm / (tn + 1e-6));
    b1[1] = tn;
    b1[2] = total;
}

// #include common/index.wgsl

// True when the step must leave everything as is (skipping on, non-finite bit 0 set).
fn skip_step() -> bool {
    let flag = metrics[3];
    return SKIP_NONFINITE && (flag & 1u) != 0u;
}

// The gradient, times the clip factor when clipping is on.
fn clipped_grad(i: u32) -> f32 {
    let cf = norm[0];
    return select(b2[i], b2[i] * cf, CLIP);
}

// SGD, PyTorch semantics with dampening 0: g' = g + wd*p; buf = momentum*buf + g'
// (buf starts at zero, so the first step gives buf = g'); p -= lr * (nesterov ?
// g' + momentum*buf : buf).
@compute @workgroup_size(256)
fn sgd_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    if (skip_step()) { return; }
    let lr = hyper[0];
    let w = b1[i];
    let g = clipped_grad(i) + p.wd * w;
    let buf = p.momentum * st0[i] + g;
    st0[i] = buf;
    let upd = select(buf, g + p.momentum * buf, NESTEROV);
    b1[i] = w - lr * upd;
}

// 1 - b^t without cancellation (bias correction; b^t is close to 1 for beta2 = 0.999).
// For b >= 0.5: ln b = log1p(-x), x = 1 - b (exact), = 2u * P(u^2) with u = -x/(2-x),
// |u| <= 1/3 (the atanh series to u^17); y = t ln b; then 1 - exp(y), or -expm1(y) =
// -y * Q(y) (its Taylor series to y^11) when |y| < 0.5. For b < 0.5, b^t <= 1/2 and 1 - pow(b, t) is
// accurate.
fn one_minus_pow(b: f32, t: u32) -> f32 {
    if (t == 0u) { return 0.0; }
    if (b <= 0.0) { return 1.0; }
    if (b < 0.5) { return 1.0 - pow(b, f32(t)); }
    let x = 1.0 - b;
    let u = -x / (2.0 - x);
    let w = u * u;
    var s = 1.0 / 17.0;
    s = s * w + 1.0 / 15.0;
    s = s * w + 1.0 / 13.0;
    s = s * w + 1.0 / 11.0;
    s = s * w + 1.0 / 9.0;
    s = s * w + 1.0 / 7.0;
    s = s * w + 1.0 / 5.0;
    s = s * w + 1.0 / 3.0;
    s = s * w + 1.0;
    let y = f32(t) * (2.0 * u * s);
    if (y < -0.5) { return 1.0 - exp(y); }
    var q = 1.0 / 39916800.0;
    q = q * y + 1.0 / 3628800.0;
    q = q * y + 1.0 / 362880.0;
    q = q * y + 1.0 / 40320.0;
    q = q * y + 1.0 / 5040.0;
    q = q * y + 1.0 / 720.0;
    q = q * y + 1.0 / 120.0;
    q = q * y + 1.0 / 24.0;
    q = q * y + 1.0 / 6.0;
    q = q * y + 0.5;
    q = q * y + 1.0;
    return -(y * q);
}

// One invocation: b1 = [1 - beta1^t, 1 - beta2^t] with t = hyper[1] (bound at 2).
@compute @workgroup_size(1)
fn adamw_bias() {
    let t = u32(b2[1]);
    b1[0] = one_minus_pow(p.beta1, t);
    b1[1] = one_minus_pow(p.beta2, t);
}

// AdamW, PyTorch semantics: p *= 1 - lr*wd; m = lerp(m, g, 1-beta1);
// v = beta2*v + (1-beta2)*g*g; p -= (lr / (1-beta1^t)) * m / (sqrt(v)/sqrt(1-beta2^t) + eps),
// the bias corrections 1 - beta^t from `adamw_bias`.
@compute @workgroup_size(256)
fn adamw_step(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    if (skip_step()) { return; }
    let lr = hyper[0];
    let bc = vec2<f32>(bias[0], bias[1]);
    let g = clipped_grad(i);
    let w = b1[i] * (1.0 - lr * p.wd);
    let m = st0[i] + (1.0 - p.beta1) * (g - st0[i]);
    let v = p.beta2 * st1[i] + (1.0 - p.beta2) * (g * g);
    st0[i] = m;
    st1[i] = v;
    let step_size = lr / bc.x;
    let denom = sqrt(v) / sqrt(bc.y) + p.eps;
    b1[i] = w - step_size * (m / denom);
}
