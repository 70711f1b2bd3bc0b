// Plain f32 copy: the memory-bandwidth yardstick the benchmark compares fake-quant against
// (same workgroup size, elements per invocation, grid and one load + one store per element as
// fake_quant_forward).

struct Params {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
// Elements per invocation, as in fake_quant.wgsl: a workgroup owns WG * EPT consecutive
// elements, invocation `lid` takes lid, lid + WG, ...
override EPT: u32 = 1u;

@compute @workgroup_size(256)
fn copy_f32(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let base = (wid.x + wid.y * nwg.x) * (WG * EPT);
    for (var j = 0u; j < EPT; j++) {
        let i = base + j * WG + lid;
        if (i < p.n) { out[i] = x[i]; }
    }
}
