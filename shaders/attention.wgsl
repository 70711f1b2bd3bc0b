// Multi-head self-attention core: everything between the QKV projection and the output
// projection (both ordinary Linear GEMMs), with optional fake-quant of the matmul inputs.
//
// Layouts (f32, row-major):
//   qkv   [B, T, 3D]  per token q (D values), k (D), v (D); head h owns columns h*dh..(h+1)*dh
//                     of each (PyTorch's in_proj chunk order).
//   mask  [B, T]      key padding: nonzero = that key is ignored, 0 = kept (HAS_MASK).
//   probs [B, H, T, T] the saved softmax P (before its fake-quant).
//   out   [B, T, D]   heads concatenated as in qkv.
//
// Forward, per query row (b, h, i):
//   s_ij = scale * FQ_q(q_i) . FQ_k(k_j)      (scale = 1/sqrt(dh)), masked keys excluded
//   P_ij = exp(s_ij - max_j s_ij) / sum_j exp(...), 0 for masked keys
//   out_i = sum_j FQ_p(P_ij) * FQ_v(v_j)      (masked keys skipped)
// A row whose keys are all masked gets P = 0 and out = 0.
//
// Backward (per (b, h), one workgroup; V^ = FQ_v(v) etc.):
//   dP_ij = (dO_i . V^_j) * STE_p(P_ij),  r_i = sum_j P_ij dP_ij,  dS_ij = P_ij (dP_ij - r_i)
//   dq_i = STE_q(q_i) * scale * sum_j dS_ij K^_j
//   dk_j = STE_k(k_j) * scale * sum_i dS_ij Q^_i
//   dv_j = STE_v(v_j) * sum_i P^_ij dO_i
// in three phases separated by workgroup storage barriers, every sum in a fixed order (no
// atomics, same bits every run); dqkv is the only scratch:
//   0. rows i: r_i, parked in the first q slot of (b, i, h) in dqkv;
//   1. columns j: dk_j, dv_j accumulated in place (they read every r_i);
//   2. rows i: read r_i, then accumulate dq_i over the same slots.
//
// Each FQ is present when its flag bit is set AND its quantizer state's fq flag (word 0) is
// nonzero; otherwise it is the identity and its STE mask is 1. States are per tensor:
// [fq_on, obs_on, initialized, _, scale, inv_scale, zero_point, min, max].

// #include common/fake_quant.wgsl
// #include common/index.wgsl

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    dmodel: u32,
    rows: u32,
    flags: u32,
    _pad0: u32,
    scale: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
    q_qmin: f32,
    q_qmax: f32,
    k_qmin: f32,
    k_qmax: f32,
    v_qmin: f32,
    v_qmax: f32,
    p_qmin: f32,
    p_qmax: f32,
}

// Bits of p.flags.
const HAS_MASK: u32 = 1u;
const FQ_Q: u32 = 2u;
const FQ_K: u32 = 4u;
const FQ_V: u32 = 8u;
const FQ_P: u32 = 16u;

// Invocations per workgroup (forward: one query row each; backward: one (b, h) per workgroup).
override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> key_mask: array<f32>;
@group(0) @binding(3) var<storage, read> q_state: array<f32>;
@group(0) @binding(4) var<storage, read> k_state: array<f32>;
@group(0) @binding(5) var<storage, read> v_state: array<f32>;
@group(0) @binding(6) var<storage, read> p_state: array<f32>;
// Forward.
@group(0) @binding(7) var<storage, read_write> probs_out: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
// Backward.
@group(0) @binding(7) var<storage, read> probs_in: array<f32>;
@group(0) @binding(8) var<storage, read> dout: array<f32>;
@group(0) @binding(9) var<storage, read_write> dqkv: array<f32>;

// One operand's fake-quant: `on` false is the identity.
struct Fq {
    on: bool,
    s: f32,
    inv_s: f32,
    z: f32,
    qmin: f32,
    qmax: f32,
}

fn fq_apply(x: f32, f: Fq) -> f32 {
    if (f.on) { return fq(x, f.s, f.inv_s, f.z, f.qmin, f.qmax); }
    return x;
}

fn fq_mask(x: f32, f: Fq) -> f32 {
    if (f.on) { return fq_pass(x, f.inv_s, f.z, f.qmin, f.qmax); }
    return 1.0;
}

// The states are read only when their flag bit says a state is bound.
fn quant_q() -> Fq {
    var f = Fq(false, 1.0, 1.0, 0.0, p.q_qmin, p.q_qmax);
    if ((p.flags & FQ_Q) != 0u && q_state[0] != 0.0) { f = Fq(true, q_state[4], q_state[5], q_state[6], p.q_qmin, p.q_qmax); }
    return f;
}
fn quant_k() -> Fq {
    var f = Fq(false, 1.0, 1.0, 0.0, p.k_qmin, p.k_qmax);
    if ((p.flags & FQ_K) != 0u && k_state[0] != 0.0) { f = Fq(true, k_state[4], k_state[5], k_state[6], p.k_qmin, p.k_qmax); }
    return f;
}
fn quant_v() -> Fq {
    var f = Fq(false, 1.0, 1.0, 0.0, p.v_qmin, p.v_qmax);
    if ((p.flags & FQ_V) != 0u && v_state[0] != 0.0) { f = Fq(true, v_state[4], v_state[5], v_state[6], p.v_qmin, p.v_qmax); }
    return f;
}
fn quant_p() -> Fq {
    var f = Fq(false, 1.0, 1.0, 0.0, p.p_qmin, p.p_qmax);
    if ((p.flags & FQ_P) != 0u && p_state[0] != 0.0) { f = Fq(true, p_state[4], p_state[5], p_state[6], p.p_qmin, p.p_qmax); }
    return f;
}

fn masked(b: u32, j: u32) -> bool {
    return (p.flags & HAS_MASK) != 0u && key_mask[b * p.tokens + j] != 0.0;
}

// Bindings: 1 qkv, 2 mask, 3-6 q/k/v/probs quantizer states, 7 probs, 8 out. One invocation
// per query row (b, h, i); the probs row is the scratch of the scores and exponentials.
@compute @workgroup_size(WG)
fn attention_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let t = p.tokens;
    let dh = p.head_dim;
    let dm = p.dmodel;
    let stride = 3u * dm;
    let i = row % t;
    let bh = row / t;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let q_off = (b * t + i) * stride + h * dh;
    let k_off = b * t * stride + dm + h * dh;
    let v_off = k_off + dm;
    let p_off = row * t;
    let o_off = (b * t + i) * dm + h * dh;
    let fqq = quant_q();
    let fqk = quant_k();
    let fqv = quant_v();
    let fqp = quant_p();

    var m = -3.0e38;
    var found = false;
    for (var j = 0u; j < t; j++) {
        if (masked(b, j)) {
            probs_out[p_off + j] = 0.0;
            continue;
        }
        let kj = k_off + j * stride;
        var acc = 0.0;
        for (var d = 0u; d < dh; d++) {
            acc += fq_apply(qkv[q_off + d], fqq) * fq_apply(qkv[kj + d], fqk);
        }
        let s = acc * p.scale;
        probs_out[p_off + j] = s;
        m = max(m, s);
        found = true;
    }
    if (!found) {
        for (var d = 0u; d < dh; d++) { out[o_off + d] = 0.0; }
        return;
    }
    var sum = 0.0;
    for (var j = 0u; j < t; j++) {
        if (masked(b, j)) { continue; }
        let e = exp(probs_out[p_off + j] - m);
        probs_out[p_off + j] = e;
        sum += e;
    }
    for (var j = 0u; j < t; j++) {
        if (masked(b, j)) { continue; }
        probs_out[p_off + j] = probs_out[p_off + j] / sum;
    }
    for (var d = 0u; d < dh; d++) {
        var acc = 0.0;
        for (var j = 0u; j < t; j++) {
            if (masked(b, j)) { continue; }
            acc += fq_apply(probs_out[p_off + j], fqp) * fq_apply(qkv[v_off + j * stride + d], fqv);
        }
        out[o_off + d] = acc;
    }
}

// dP_ij = (dO_i . V^_j) * STE_p(P_ij): `o_i` offset of dO_i, `v_j` offset of v_j.
fn grad_p(o_i: u32, v_j: u32, pij: f32, fqv: Fq, fqp: Fq) -> f32 {
    var acc = 0.0;
    for (var d = 0u; d < p.head_dim; d++) {
        acc += dout[o_i + d] * fq_apply(qkv[v_j + d], fqv);
    }
    return acc * fq_mask(pij, fqp);
}

// Bindings: 1 qkv, 2 mask, 3-6 q/k/v/probs quantizer states, 7 probs, 8 dout, 9 dqkv
// (overwritten). One workgroup per (b, h), folded over (x, y).
@compute @workgroup_size(WG)
fn attention_backward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let bh = wid.x + wid.y * nwg.x;
    if (bh >= p.batch * p.heads) { return; }
    let t = p.tokens;
    let dh = p.head_dim;
    let dm = p.dmodel;
    let stride = 3u * dm;
    let h = bh % p.heads;
    let b = bh / p.heads;
    // q slot of token 0 of this head (k at + dm, v at + 2 dm; token j at + j * stride).
    let base = b * t * stride + h * dh;
    let o_base = b * t * dm + h * dh;
    let p_base = bh * t * t;
    let fqq = quant_q();
    let fqk = quant_k();
    let fqv = quant_v();
    let fqp = quant_p();

    // Phase 0: r_i = sum_j P_ij dP_ij, parked in dqkv's first q slot of (b, i, h).
    for (var i = lid; i < t; i += WG) {
        let o_i = o_base + i * dm;
        var r = 0.0;
        for (var j = 0u; j < t; j++) {
            if (masked(b, j)) { continue; }
            let pij = probs_in[p_base + i * t + j];
            r += pij * grad_p(o_i, base + j * stride + 2u * dm, pij, fqv, fqp);
        }
        dqkv[base + i * stride] = r;
    }
    storageBarrier();

    // Phase 1: columns j: dk_j and dv_j, summed over i in order.
    for (var j = lid; j < t; j += WG) {
        let k_j = base + j * stride + dm;
        let v_j = k_j + dm;
        for (var d = 0u; d < dh; d++) {
            dqkv[k_j + d] = 0.0;
            dqkv[v_j + d] = 0.0;
        }
        if (masked(b, j)) { continue; }
        for (var i = 0u; i < t; i++) {
            let o_i = o_base + i * dm;
            let q_i = base + i * stride;
            let pij = probs_in[p_base + i * t + j];
            let ds = pij * (grad_p(o_i, v_j, pij, fqv, fqp) - dqkv[q_i]);
            let ph = fq_apply(pij, fqp);
            for (var d = 0u; d < dh; d++) {
                dqkv[k_j + d] += ds * fq_apply(qkv[q_i + d], fqq);
                dqkv[v_j + d] += ph * dout[o_i + d];
            }
        }
        for (var d = 0u; d < dh; d++) {
            dqkv[k_j + d] = dqkv[k_j + d] * p.scale * fq_mask(qkv[k_j + d], fqk);
            dqkv[v_j + d] = dqkv[v_j + d] * fq_mask(qkv[v_j + d], fqv);
        }
    }
    storageBarrier();

    // Phase 2: rows i: dq_i over the slots that held r_i.
    for (var i = lid; i < t; i += WG) {
        let o_i = o_base + i * dm;
        let q_i = base + i * stride;
        let r = dqkv[q_i];
        for (var d = 0u; d < dh; d++) { dqkv[q_i + d] = 0.0; }
        for (var j = 0u; j < t; j++) {
            if (masked(b, j)) { continue; }
            let k_j = base + j * stride + dm;
            let pij = probs_in[p_base + i * t + j];
            let ds = pij * (grad_p(o_i, k_j + dm, pij, fqv, fqp) - r);
            for (var d = 0u; d < dh; d++) {
                dqkv[q_i + d] += ds * fq_apply(qkv[k_j + d], fqk);
            }
        }
        for (var d = 0u; d < dh; d++) {
            dqkv[q_i + d] = dqkv[q_i + d] * p.scale * fq_mask(qkv[q_i + d], fqq);
        }
    }
}
