// Fake-quant of one value: code `clamp(round(v / s) + z, qmin, qmax)` (WGSL's round is
// half to even, as PyTorch and the CPU references), then its value `(q - z) * s`.
// `inv_s` is 1/s as stored in the quantizer state, so every backend multiplies alike.
fn fq(v: f32, s: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    let q = clamp(round(v * inv_s) + z, qmin, qmax);
    return (q - z) * s;
}

// 1 where fake-quant passes the gradient (the code is not clamped), else 0: the STE mask.
fn fq_pass(v: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    let c = round(v * inv_s) + z;
    return select(0.0, 1.0, c >= qmin && c <= qmax);
}

// `fq` of four values sharing qmin/qmax; (s, inv_s, z) per lane (splat them for one channel).
fn fq4(v: vec4<f32>, s: vec4<f32>, inv_s: vec4<f32>, z: vec4<f32>, qmin: f32, qmax: f32) -> vec4<f32> {
    let q = clamp(round(v * inv_s) + z, vec4<f32>(qmin), vec4<f32>(qmax));
    return (q - z) * s;
}

// True where fake-quant passes the gradient (the code is not clamped): the STE mask as a
// condition, for `select(0.0, g, fq_keeps(...))` (a NaN or infinite g stays masked to 0).
fn fq_keeps(v: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> bool {
    let c = round(v * inv_s) + z;
    return c >= qmin && c <= qmax;
}
