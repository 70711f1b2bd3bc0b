// Sum of one f32 per invocation over a 256-invocation workgroup, every invocation gets the
// total. A fixed tree order (same bits every run, no atomics); barriers inside, so call it
// from uniform control flow. The scratch array is the module's own.
var<workgroup> wg_sum_scratch: array<f32, 256>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    workgroupBarrier();
    wg_sum_scratch[lid] = v;
    workgroupBarrier();
    for (var step = 128u; step > 0u; step = step / 2u) {
        if (lid < step) { wg_sum_scratch[lid] = wg_sum_scratch[lid] + wg_sum_scratch[lid + step]; }
        workgroupBarrier();
    }
    return wg_sum_scratch[0];
}
