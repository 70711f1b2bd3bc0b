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
// Backward (one workgroup per (b, h); V^ = FQ_v(v) etc.):
//   dP_ij = (dO_i . V^_j) * STE_p(P_ij),  r_i = sum_j P_ij dP_ij,  dS_ij = P_ij (dP_ij - r_i)
//   dq_i = STE_q(q_i) * scale * sum_j dS_ij K^_j
//   dk_j = STE_k(k_j) * scale * sum_i dS_ij Q^_i
//   dv_j = STE_v(v_j) * sum_i P^_ij dO_i
// in three phases separated by workgroup storage barriers, every sum in a fixed order (no
// atomics, same bits every run); dqkv is the only scratch:
//   0. rows i: r_i, parked in the first q slot of (b, i, h) in dqkv;
//   1. columns j: dk_j, dv_j (they read every r_i);
//   2. rows i: read r_i, then write dq_i over the same slots.
//
// Register blocking: an invocation owns a row (or column) and holds the first CW = 16 dims of
// its vector (q_i, dO_i or V^_j) and of its accumulators in NV = 4 vec4 registers (constant
// loops, unrolled); dims past CW are streamed from memory (accumulators read-modify-write in
// their own output slots). Workgroups cover rows of ONE (b, h), so the other operand (k_j,
// v_j, q_i, dO_i of the loop counter) and the mask are the same address across the
// workgroup: broadcast loads. A lane's own vector is loaded and stored through a scalar loop
// and a private array: unrolled into the vec4 code, lane-varying accesses are scalarized per
// lane and cost seconds of pipeline compile on lavapipe, for no speed.
//
// Each FQ is present when its flag bit is set AND its quantizer state's fq flag (word 0) is
// nonzero; otherwise it is the identity and its STE mask is 1. States are per tensor:
// [fq_on, obs_on, initialized, _, scale, inv_scale, zero_point, min, max].

// #include common/fake_quant.wgsl

struct Params {
    batch: u32,
    tokens: u32,
    heads: u32,
    head_dim: u32,
    dmodel: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    scale: f32,
    _pad2: f32,
    _pad3: f32,
    _pad4: f32,
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

// Invocations per workgroup (forward: WG query rows of one (b, h); backward: one (b, h)).
override WG: u32 = 32u;
// Register chunk: CW dims as NV vec4s.
const NV: u32 = 4u;
const CW: u32 = 16u;

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

// `fq` on four values (the same operations per component, so the same bits).
fn fq4_apply(v: vec4<f32>, f: Fq) -> vec4<f32> {
    let q = (clamp(round(v * f.inv_s) + f.z, vec4<f32>(f.qmin), vec4<f32>(f.qmax)) - f.z) * f.s;
    return select(v, q, f.on);
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

// Which of the four dims 4c .. 4c+3 of a chunk lie below `lim` (the dims left in the head).
fn in_head(c: u32, lim: u32) -> vec4<bool> {
    let e = 4u * c;
    return vec4<u32>(e, e + 1u, e + 2u, e + 3u) < vec4<u32>(lim);
}

// qkv[off + 4c .. off + 4c + 3] fake-quantized, zero at dims >= lim.
fn qkv4(off: u32, c: u32, lim: u32, f: Fq) -> vec4<f32> {
    let e = off + 4u * c;
    let v = vec4<f32>(qkv[e], qkv[e + 1u], qkv[e + 2u], qkv[e + 3u]);
    return select(vec4<f32>(0.0), fq4_apply(v, f), in_head(c, lim));
}

// dout[off + 4c .. off + 4c + 3], zero at dims >= lim.
fn dout4(off: u32, c: u32, lim: u32) -> vec4<f32> {
    let e = off + 4u * c;
    let v = vec4<f32>(dout[e], dout[e + 1u], dout[e + 2u], dout[e + 3u]);
    return select(vec4<f32>(0.0), v, in_head(c, lim));
}

// dO_i . V^_j over the dims past the register chunk (none when the head fits it).
fn dot_rest(o_i: u32, v_j: u32, fqv: Fq) -> f32 {
    var acc = 0.0;
    for (var d = CW; d < p.head_dim; d++) { acc += dout[o_i + d] * fq_apply(qkv[v_j + d], fqv); }
    return acc;
}

// A private array of CW scalars as NV vec4s and back (constant indices: registers).
fn to_vec(a: array<f32, CW>) -> array<vec4<f32>, NV> {
    return array<vec4<f32>, NV>(
        vec4<f32>(a[0], a[1], a[2], a[3]),
        vec4<f32>(a[4], a[5], a[6], a[7]),
        vec4<f32>(a[8], a[9], a[10], a[11]),
        vec4<f32>(a[12], a[13], a[14], a[15]),
    );
}

fn to_scalars(v: array<vec4<f32>, NV>) -> array<f32, CW> {
    return array<f32, CW>(
        v[0].x, v[0].y, v[0].z, v[0].w, v[1].x, v[1].y, v[1].z, v[1].w,
        v[2].x, v[2].y, v[2].z, v[2].w, v[3].x, v[3].y, v[3].z, v[3].w,
    );
}

// A lane's own FQ(qkv[off .. off + min(lim, CW)]), zero past lim.
fn qkv_chunk(off: u32, lim: u32, f: Fq) -> array<vec4<f32>, NV> {
    var a: array<f32, CW>;
    for (var d = 0u; d < min(lim, CW); d++) { a[d] = fq_apply(qkv[off + d], f); }
    return to_vec(a);
}

// A lane's own dout[off .. off + min(lim, CW)], zero past lim.
fn dout_chunk(off: u32, lim: u32) -> array<vec4<f32>, NV> {
    var a: array<f32, CW>;
    for (var d = 0u; d < min(lim, CW); d++) { a[d] = dout[off + d]; }
    return to_vec(a);
}

// Bindings: 1 qkv, 2 mask, 3-6 q/k/v/probs quantizer states, 7 probs, 8 out. Workgroup w
// covers query rows (w % nblk) * WG + lid of (b, h) = w / nblk; the probs row is the scratch
// of the scores and exponentials.
@compute @workgroup_size(WG)
fn attention_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let t = p.tokens;
    let nblk = (t + WG - 1u) / WG;
    let w = wid.x + wid.y * nwg.x;
    let bh = w / nblk;
    let i = (w % nblk) * WG + lid;
    if (bh >= p.batch * p.heads || i >= t) { return; }
    let dh = p.head_dim;
    let dm = p.dmodel;
    let stride = 3u * dm;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let q_off = (b * t + i) * stride + h * dh;
    let k_off = b * t * stride + dm + h * dh;
    let v_off = k_off + dm;
    let p_off = (bh * t + i) * t;
    let o_off = (b * t + i) * dm + h * dh;
    let fqq = quant_q();
    let fqk = quant_k();
    let fqv = quant_v();
    let fqp = quant_p();

    // Dot products Q^_i . K^_j into the probs row, one register chunk of Q^_i at a time.
    for (var c0 = 0u; c0 < dh; c0 += CW) {
        let lim = dh - c0;
        let qv = qkv_chunk(q_off + c0, lim, fqq);
        for (var j = 0u; j < t; j++) {
            if (masked(b, j)) { continue; }
            let k_j = k_off + j * stride + c0;
            var acc = 0.0;
            for (var c = 0u; c < NV; c++) { acc += dot(qv[c], qkv4(k_j, c, lim, fqk)); }
            if (c0 == 0u) {
                probs_out[p_off + j] = acc;
            } else {
                probs_out[p_off + j] += acc;
            }
        }
    }
    // Softmax over the unmasked keys (none: every loop skips, the row stays 0).
    var m = -3.0e38;
    for (var j = 0u; j < t; j++) {
        if (masked(b, j)) {
            probs_out[p_off + j] = 0.0;
            continue;
        }
        m = max(m, probs_out[p_off + j] * p.scale);
    }
    var sum = 0.0;
    for (var j = 0u; j < t; j++) {
        if (masked(b, j)) { continue; }
        let e = exp(probs_out[p_off + j] * p.scale - m);
        probs_out[p_off + j] = e;
        sum += e;
    }
    for (var j = 0u; j < t; j++) {
        if (masked(b, j)) { continue; }
        probs_out[p_off + j] = probs_out[p_off + j] / sum;
    }
    // out_i = sum_j FQ(P_ij) V^_j, one register chunk at a time.
    for (var c0 = 0u; c0 < dh; c0 += CW) {
        let lim = dh - c0;
        var ov: array<vec4<f32>, NV>;
        for (var j = 0u; j < t; j++) {
            if (masked(b, j)) { continue; }
            let ph = fq_apply(probs_out[p_off + j], fqp);
            let v_j = v_off + j * stride + c0;
            for (var c = 0u; c < NV; c++) { ov[c] += ph * qkv4(v_j, c, lim, fqv); }
        }
        let o = to_scalars(ov);
        for (var d = 0u; d < min(lim, CW); d++) { out[o_off + c0 + d] = o[d]; }
    }
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
    let n0 = min(dh, CW);
    let fqq = quant_q();
    let fqk = quant_k();
    let fqv = quant_v();
    let fqp = quant_p();

    // Phase 0, rows i: r_i = sum_j P_ij dP_ij, parked in dqkv's first q slot of (b, i, h).
    for (var i = lid; i < t; i += WG) {
        let o_i = o_base + i * dm;
        var r = 0.0;
        for (var c0 = 0u; c0 < dh; c0 += CW) {
            let lim = dh - c0;
            let ov = dout_chunk(o_i + c0, lim);
            for (var j = 0u; j < t; j++) {
                if (masked(b, j)) { continue; }
                let v_j = base + j * stride + 2u * dm + c0;
                var acc = 0.0;
                for (var c = 0u; c < NV; c++) { acc += dot(ov[c], qkv4(v_j, c, lim, fqv)); }
                let pij = probs_in[p_base + i * t + j];
                r += pij * (acc * fq_mask(pij, fqp));
            }
        }
        dqkv[base + i * stride] = r;
    }
    storageBarrier();

    // Phase 1, columns j: dk_j and dv_j, summed over i in order.
    for (var j = lid; j < t; j += WG) {
        let k_j = base + j * stride + dm;
        let v_j = k_j + dm;
        for (var d = CW; d < dh; d++) {
            dqkv[k_j + d] = 0.0;
            dqkv[v_j + d] = 0.0;
        }
        let vv = qkv_chunk(v_j, n0, fqv);
        var gk: array<vec4<f32>, NV>;
        var gv: array<vec4<f32>, NV>;
        // A masked key gets no gradient: no rows.
        let rows = select(t, 0u, masked(b, j));
        for (var i = 0u; i < rows; i++) {
            let o_i = o_base + i * dm;
            let q_i = base + i * stride;
            var dp = 0.0;
            for (var c = 0u; c < NV; c++) { dp += dot(dout4(o_i, c, n0), vv[c]); }
            dp += dot_rest(o_i, v_j, fqv);
            let pij = probs_in[p_base + i * t + j];
            let ds = pij * (dp * fq_mask(pij, fqp) - dqkv[q_i]);
            let ph = fq_apply(pij, fqp);
            for (var c = 0u; c < NV; c++) {
                gk[c] += ds * qkv4(q_i, c, n0, fqq);
                gv[c] += ph * dout4(o_i, c, n0);
            }
            for (var d = CW; d < dh; d++) {
                dqkv[k_j + d] += ds * fq_apply(qkv[q_i + d], fqq);
                dqkv[v_j + d] += ph * dout[o_i + d];
            }
        }
        let sk = to_scalars(gk);
        let sv = to_scalars(gv);
        for (var d = 0u; d < dh; d++) {
            var gkd = sk[min(d, CW - 1u)];
            var gvd = sv[min(d, CW - 1u)];
            if (d >= CW) {
                gkd = dqkv[k_j + d];
                gvd = dqkv[v_j + d];
            }
            dqkv[k_j + d] = gkd * p.scale * fq_mask(qkv[k_j + d], fqk);
            dqkv[v_j + d] = gvd * fq_mask(qkv[v_j + d], fqv);
        }
    }
    storageBarrier();

    // Phase 2, rows i: dq_i over the slots that held r_i.
    for (var i = lid; i < t; i += WG) {
        let o_i = o_base + i * dm;
        let q_i = base + i * stride;
        let r = dqkv[q_i];
        for (var d = CW; d < dh; d++) { dqkv[q_i + d] = 0.0; }
        let ov = dout_chunk(o_i, n0);
        var gq: array<vec4<f32>, NV>;
        for (var j = 0u; j < t; j++) {
            if (masked(b, j)) { continue; }
            let k_j = base + j * stride + dm;
            let v_j = k_j + dm;
            var dp = 0.0;
            for (var c = 0u; c < NV; c++) { dp += dot(ov[c], qkv4(v_j, c, n0, fqv)); }
            dp += dot_rest(o_i, v_j, fqv);
            let pij = probs_in[p_base + i * t + j];
            let ds = pij * (dp * fq_mask(pij, fqp) - r);
            for (var c = 0u; c < NV; c++) { gq[c] += ds * qkv4(k_j, c, n0, fqk); }
            for (var d = CW; d < dh; d++) { dqkv[q_i + d] += ds * fq_apply(qkv[k_j + d], fqk); }
        }
        let sq = to_scalars(gq);
        for (var d = 0u; d < dh; d++) {
            var gqd = sq[min(d, CW - 1u)];
            if (d >= CW) { gqd = dqkv[q_i + d]; }
            dqkv[q_i + d] = gqd * p.scale * fq_mask(qkv[q_i + d], fqq);
        }
    }
}
