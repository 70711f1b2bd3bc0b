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

fn linear_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// Forward: out = fake_quant(x); identity when the quantizer's fake-quant flag is off.
@compute @workgroup_size(256)
fn fake_quant_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) { return; }
    let v = x[i];
    if (qs[0] == 0.0) { out[i] = v; return; }
    let c = (i / p.inner) % p.channels;
    let s = qs[4u + c];
    let inv_s = qs[4u + p.channels + c];
    let z = qs[4u + 2u * p.channels + c];
    let q = clamp(round(v * inv_s) + z, p.qmin, p.qmax);
    out[i] = (q - z) * s;
}

// STE backward: dx = dy where qmin <= round(x * inv_s) + z <= qmax, else 0.
// Binding 1 is x, 2 the state, 3 dy (read), 4 dx (written).
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn ste_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = linear_index(gid, nwg);
    if (i >= p.n) { return; }
    let g = out[i];
    if (qs[0] == 0.0) { dx[i] = g; return; }
    let c = (i / p.inner) % p.channels;
    let inv_s = qs[4u + p.channels + c];
    let z = qs[4u + 2u * p.channels + c];
    let r = round(x[i] * inv_s) + z;
    dx[i] = select(0.0, g, r >= p.qmin && r <= p.qmax);
}
