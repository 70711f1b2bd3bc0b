// Elementwise activations and buffer helpers (NCHW, flat index).
//
// relu_forward:  y = max(x, 0), or min(max(x, 0), 6) when RELU6.
// relu_backward: dx = dy where 0 < x (< 6 for RELU6), else 0. Uses the FORWARD INPUT x
//                (for plain ReLU the forward output works too: y > 0 <=> x > 0).
// add_forward:   out = a + b (residual add).
// accumulate:    dst += src (gradient fan-out).
// fill:          buf = value.
// Buffers may not alias (no in-place forms).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    value: f32,
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
