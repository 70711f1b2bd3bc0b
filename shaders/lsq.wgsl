// LSQ (Esser et al. 2019) gradients of the learnable scale and zero point, in PyTorch's
// _fake_quantize_learnable form, as a two-stage per-channel reduction.
//
// With u = x * inv_s, r = round(u) + z:
//   qmin <= r <= qmax: d(out)/ds = round(u) - u,  d(out)/dz = 0
//   r < qmin:          d(out)/ds = qmin - z,      d(out)/dz = -s
//   r > qmax:          d(out)/ds = qmax - z,      d(out)/dz = -s
// dscale[c] = grad_factor * sum dy * d(out)/ds over channel c (likewise dzero); both are 0
// when the quantizer's fake-quant flag is off.
// Quantizer state layout (see src/quant.rs): [fq_on, obs_on, initialized, _,
// scale[C], inv_scale[C], zero_point[C], min[C], max[C]].
//
// Learned quantizers (LSQ / LSQ+) also keep their parameters in plain buffers that the
// optimizer updates (`scale[C]`, and for LSQ+ `zero[C]`, continuous). Three small entry
// points connect them to the state every fake-quant kernel reads:
//   lsq_init:  parameters <- state (the calibrated observer's scale and zero point);
//   lsq_sync:  after the optimizer step: scale = max(scale, eps) (written back), state
//              scale = scale, inv_scale = 1/scale, zero point = clamp(round(zero), qmin, qmax)
//              (PyTorch's _LearnableFakeQuantize rounds its float zero point the same way);
//   lsq_hyper: the learned parameters' hyper buffer = the optimizer's with lr * multiplier.
// flags bit 0: the zero point is learned (binding c3 holds it).

struct Params {
    channels: u32,
    inner: u32,
    per_channel: u32,
    chunks: u32,
    chunk_len: u32,
    flags: u32,
    qmin: f32,
    qmax: f32,
    grad_factor: f32,
    eps: f32,
    _p1: f32,
    _p2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// lsq_partial: a = x, b = dy, c = state, d = partials (2 per (channel, chunk)).
// lsq_final:   a = partials, b = dscale[C], c = dzero[C] (overwritten).
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c3: array<f32>;
@group(0) @binding(4) var<storage, read_write> d4: array<f32>;

const WG: u32 = 256u;
var<workgroup> ss: array<f32, 256>;
var<workgroup> sz: array<f32, 256>;

fn reduce_shared(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            ss[lid] = ss[lid] + ss[lid + s];
            sz[lid] = sz[lid] + sz[lid + s];
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn lsq_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let wid = wg.x + wg.y * nwg.x;
    let live = wid < p.channels * p.chunks;
    let ch = wid / max(p.chunks, 1u);
    let k = wid % max(p.chunks, 1u);
    var gs = 0.0;
    var gz = 0.0;
    if (live && c3[0] != 0.0) {
        let C = p.channels;
        let s = c3[4u + ch];
        let inv_s = c3[4u + C + ch];
        let z = c3[4u + 2u * C + ch];
        let start = k * p.chunk_len;
        let end = min(start + p.chunk_len, p.per_channel);
        for (var j = start + lid; j < end; j = j + WG) {
            let i = ((j / p.inner) * C + ch) * p.inner + j % p.inner;
            let u = a[i] * inv_s;
            let ru = round(u);
            let r = ru + z;
            let g = b[i];
            if (r < p.qmin) {
                gs = gs + (p.qmin - z) * g;
                gz = gz - s * g;
            } else if (r > p.qmax) {
                gs = gs + (p.qmax - z) * g;
                gz = gz - s * g;
            } else {
                gs = gs + (ru - u) * g;
            }
        }
    }
    ss[lid] = gs;
    sz[lid] = gz;
    workgroupBarrier();
    reduce_shared(lid);
    if (live && lid == 0u) {
        d4[2u * wid] = ss[0];
        d4[2u * wid + 1u] = sz[0];
    }
}

@compute @workgroup_size(256)
fn lsq_final(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let ch = wg.x + wg.y * nwg.x;
    let live = ch < p.channels;
    var gs = 0.0;
    var gz = 0.0;
    if (live) {
        for (var k = lid; k < p.chunks; k = k + WG) {
            let o = 2u * (ch * p.chunks + k);
            gs = gs + a[o];
            gz = gz + a[o + 1u];
        }
    }
    ss[lid] = gs;
    sz[lid] = gz;
    workgroupBarrier();
    reduce_shared(lid);
    if (live && lid == 0u) {
        b[ch] = p.grad_factor * ss[0];
        c3[ch] = p.grad_factor * sz[0];
    }
}

// a = scale parameter [C], b = state, c3 = zero-point parameter [C] (when flags bit 0).
@compute @workgroup_size(64)
fn lsq_init(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.channels) {
        return;
    }
    a[ch] = b[4u + ch];
    if ((p.flags & 1u) != 0u) {
        c3[ch] = b[4u + 2u * p.channels + ch];
    }
}

// a = scale parameter [C], b = state, c3 = zero-point parameter [C] (when flags bit 0).
@compute @workgroup_size(64)
fn lsq_sync(@builtin(global_invocation_id) gid: vec3<u32>) {
    let ch = gid.x;
    if (ch >= p.channels) {
        return;
    }
    let C = p.channels;
    let s = max(a[ch], p.eps);
    a[ch] = s;
    b[4u + ch] = s;
    b[4u + C + ch] = 1.0 / s;
    if ((p.flags & 1u) != 0u) {
        b[4u + 2u * C + ch] = clamp(round(c3[ch]), p.qmin, p.qmax);
    }
}

// a = the optimizer's hyper buffer [4] (lr, step, ...), b = the learned parameters' copy.
@compute @workgroup_size(1)
fn lsq_hyper() {
    b[0] = a[0] * p.grad_factor;
    b[1] = a[1];
    b[2] = a[2];
    b[3] = a[3];
}
