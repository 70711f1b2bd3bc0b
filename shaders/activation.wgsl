// Elementwise activations and buffer helpers (NCHW, flat index).
//
// relu_forward:  y = max(x, 0), or min(max(x, 0), 6) when RELU6.
// relu_backward: dx = dy where 0 < x (< 6 for RELU6), else 0. Uses the FORWARD INPUT x
//                (for plain ReLU the forward output works too: y > 0 <=> x > 0).
// add_forward:   out = a + b (residual add).
// accumulate:    dst += src (gradient fan-out).
// fill:          buf = value.
// add_quant:     out = FQ_a(a) + FQ_b(b) (then max(., 0) when RELU): the residual add of a
//                quantized graph with its inputs' per-tensor fake-quant fused (same bits as
//                fake_quant_forward of each input, then add_forward, then relu_forward), and
//                the (min, max) of each workgroup's outputs (the output observer's first stage).
// Buffers may not alias (no in-place forms).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    value: f32,
    qmin_a: f32,   // add_quant: code ranges of the two inputs' quantizers
    qmax_a: f32,
    qmin_b: f32,
    qmax_b: f32,
}

override RELU6: bool = false;

const WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(1) var<storage, read_write> fill_buf: array<f32>;

// #include common/index.wgsl
// #include common/fake_quant.wgsl
// #include common/wg_minmax.wgsl

// Bindings: 1 x, 2 y.
@compute @workgroup_size(256)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    var v = max(in1[i], 0.0);
    if (RELU6) { v = min(v, 6.0); }
    out2[i] = v;
}

// Bindings: 1 x (forward input), 2 dy, 3 dx.
@compute @workgroup_size(256)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let x = in1[i];
    var pass_grad = x > 0.0;
    if (RELU6) { pass_grad = pass_grad && x < 6.0; }
    out3[i] = select(0.0, in2[i], pass_grad);
}

// Bindings: 1 a, 2 b, 3 out.
@compute @workgroup_size(256)
fn add_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    out3[i] = in1[i] + in2[i];
}

// Bindings: 1 src, 2 dst (read and written).
@compute @workgroup_size(256)
fn accumulate(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    out2[i] = out2[i] + in1[i];
}

// Bindings: 1 buf.
@compute @workgroup_size(256)
fn fill(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    fill_buf[i] = p.value;
}

// ---- add_quant: 1 a, 2 b (raw), 3 out, 4 state of a's quantizer (FQ_A; else any), 5 state of
// b's (FQ_B; else any), 6 partials (written: min, max of workgroup k's outputs at 2k, 2k + 1) ----
// Workgroup k owns elements [k * WG * EPT, (k + 1) * WG * EPT), invocation lid takes
// lid, lid + WG, ... of them. Per-tensor quantizers only; identity while a state's fq_on is 0.
override FQ_A: bool = false;
override FQ_B: bool = false;
override RELU: bool = false;
override EPT: u32 = 1u;
@group(0) @binding(4) var<storage, read> qa: array<f32>;
@group(0) @binding(5) var<storage, read> qb: array<f32>;
@group(0) @binding(6) var<storage, read_write> add_part: array<f32>;

@compute @workgroup_size(256)
fn add_quant(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>,
             @builtin(num_workgroups) nwg: vec3<u32>) {
    let k = wid.x + wid.y * nwg.x;
    let base = k * (WG * EPT);
    let fa = FQ_A && qa[0] != 0.0;
    let fb = FQ_B && qb[0] != 0.0;
    var lo = bitcast<f32>(0x7f800000u);
    var hi = -lo;
    for (var j = 0u; j < EPT; j++) {
        let i = base + lid + j * WG;
        if (i < p.n) {
            var va = in1[i];
            if (fa) { va = fq(va, qa[4], qa[5], qa[6], p.qmin_a, p.qmax_a); }
            var vb = in2[i];
            if (fb) { vb = fq(vb, qb[4], qb[5], qb[6], p.qmin_b, p.qmax_b); }
            var v = va + vb;
            if (RELU) { v = max(v, 0.0); }
            out3[i] = v;
            lo = min(lo, v);
            hi = max(hi, v);
        }
    }
    let mm = wg_minmax(lo, hi, lid);
    if (lid == 0u && base < p.n) {
        add_part[2u * k] = mm.x;
        add_part[2u * k + 1u] = mm.y;
    }
}
