// Conv2d bias gradient: db[co] = sum over n, oh, ow of dY[n, co, oh, ow].
// One workgroup per output channel (workgroup x), a strided sum per invocation, then a
// tree reduction in workgroup memory (deterministic).

// #include common/conv_params.wgsl

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> db: array<f32>;

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn conv2d_bias_grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let co = wid.x;
    let ohw = p.oh * p.ow;
    let total = p.n * ohw;
    var acc = 0.0;
    for (var i = lid; i < total; i += WG) {
        acc += dy[(i / ohw * p.c_out + co) * ohw + i % ohw];
    }
    red[lid] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) { db[co] = red[0]; }
}
