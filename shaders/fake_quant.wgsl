// Elementwise fake-quant forward and straight-through-estimator backward.
//
// q = clamp(round(x * inv_s) + z, qmin, qmax); out = (q - z) * s.
// round() in WGSL rounds half to even, as PyTorch does. inv_s is read from the quantizer
// state (never computed here) so GPU and CPU codes agree bit for bit.
// Quantizer state layout (see src/quant.rs): [fq_on, obs_on, initialized, _,
// scale[C], inv_scale[C], zero_point[C], min[C], max[C]].

struct Params {
    n: u32,         // elements
    channels: u32,  // C (1 = per tensor)
    inner: u32,     // product of dims after the channel axis
    _pad: u32,
    qmin: f32,
    qmax: f32,
    _pad2: vec2<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> qs: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
// Elements per invocation (specialization: 1 on real GPUs, more on CPU adapters such as
// lavapipe, where each workgroup carries a fixed cost). A workgroup owns WG * EPT consecutive
// elements and invocation `lid` takes elements lid, lid + WG, ... of them, so consecutive
// invocations always touch consecutive addresses (coalesced). The host sizes the grid as
// `grid_1d(ceil(n / EPT), WG)`.
override EPT: u32 = 1u;

// #include common/fake_quant.wgsl

// First element of this workgroup's chunk.
fn chunk_base(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return (wid.x + wid.y * nwg.x) * (WG * EPT);
}

// (s, inv_s, z) of channel c.
fn qparams(c: u32) -> vec3<f32> {
    return vec3<f32>(qs[4u + c], qs[4u + p.channels + c], qs[4u + 2u * p.channels + c]);
}

// The quantizer parameters of one invocation's EPT elements e0 + j * WG. Loads whose index is
// not a constant are gathers on CPU adapters (lavapipe), so per-channel parameters are read
// once per invocation rather than per element where possible: when the invocation's elements
// span less than a channel run (`inner` elements), at most one channel boundary falls among
// them, and element j takes `first` before it and `second` from it on (r + j * WG >= inner).
struct Lane {
    first: vec3<f32>,
    second: vec3<f32>,
    r: u32,
    hoisted: bool,
}

fn lane_params(base: u32, lid: u32) -> Lane {
    var l: Lane;
    l.hoisted = true;
    l.r = 0u;
    if (p.channels == 1u) {
        // Constant indices: uniform loads.
        l.first = vec3<f32>(qs[4], qs[5], qs[6]);
        l.second = l.first;
    } else if (p.inner >= WG && (EPT - 1u) * WG < p.inner) {
        // The channel of the workgroup's first element is divided out once per workgroup
        // (uniform), each invocation steps over at most one boundary from there.
        let cb = (base / p.inner) % p.channels;
        let rl = base % p.inner + lid;
        let step = rl >= p.inner;
        var c = select(cb, cb + 1u, step);
        if (c == p.channels) { c = 0u; }
        l.r = select(rl, rl - p.inner, step);
        l.first = qparams(c);
        l.second = l.first;
        // Only invocations whose elements reach the next channel read it (most workgroups of
        // a row-aligned tensor have none, and skip the gathers).
        if (l.r + (EPT - 1u) * WG >= p.inner) {
            l.second = qparams(select(c + 1u, 0u, c + 1u == p.channels));
        }
    } else {
        l.hoisted = false;
    }
    return l;
}

// Parameters of element j of the invocation (element index i).
fn elem_params(l: Lane, j: u32, i: u32) -> vec3<f32> {
    if (l.hoisted) {
        return select(l.first, l.second, l.r + j * WG >= p.inner);
    }
    return qparams((i / p.inner) % p.channels);
}

// Forward: out = fake_quant(x); identity when the quantizer's fake-quant flag is off.
@compute @workgroup_size(256)
fn fake_quant_forward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = chunk_base(wid, nwg);
    let e0 = base + lid;
    if (qs[0] == 0.0) {
        for (var j = 0u; j < EPT; j++) {
            let i = e0 + j * WG;
            if (i < p.n) { out[i] = x[i]; }
        }
        return;
    }
    let l = lane_params(base, lid);
    // Per tensor with an integral zero point (the usual case): clamp(round(v * inv_s) + z,
    // qmin, qmax) - z equals clamp(round(v * inv_s), qmin - z, qmax - z) exactly (integers
    // below 2^24; beyond, both clamp), two operations fewer per element.
    let z = l.first.z;
    if (p.channels == 1u && z == round(z) && abs(z) < 16777216.0) {
        let lo = p.qmin - z;
        let hi = p.qmax - z;
        for (var j = 0u; j < EPT; j++) {
            let i = e0 + j * WG;
            if (i < p.n) {
                out[i] = clamp(round(x[i] * l.first.y), lo, hi) * l.first.x;
            }
        }
        return;
    }
    for (var j = 0u; j < EPT; j++) {
        let i = e0 + j * WG;
        if (i < p.n) {
            let q = elem_params(l, j, i);
            out[i] = fq(x[i], q.x, q.y, q.z, p.qmin, p.qmax);
        }
    }
}

// STE backward: dx = dy where qmin <= round(x * inv_s) + z <= qmax, else 0.
// Binding 1 is x, 2 the state, 3 dy (read), 4 dx (written).
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn ste_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = chunk_base(wid, nwg);
    let e0 = base + lid;
    if (qs[0] == 0.0) {
        for (var j = 0u; j < EPT; j++) {
            let i = e0 + j * WG;
            if (i < p.n) { dx[i] = out[i]; }
        }
        return;
    }
    let l = lane_params(base, lid);
    for (var j = 0u; j < EPT; j++) {
        let i = e0 + j * WG;
        if (i < p.n) {
            let q = elem_params(l, j, i);
            dx[i] = select(0.0, out[i], fq_keeps(x[i], q.y, q.z, p.qmin, p.qmax));
        }
    }
}
