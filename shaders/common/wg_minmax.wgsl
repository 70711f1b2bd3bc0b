// (min, max) of one pair per invocation over a 256-invocation workgroup; every invocation
// gets the result. Barriers inside, so call it from uniform control flow. Min and max do
// not depend on the order, so any tree is exact. The scratch arrays are the module's own.
var<workgroup> wg_mm_lo: array<f32, 256>;
var<workgroup> wg_mm_hi: array<f32, 256>;

fn wg_minmax(lo: f32, hi: f32, lid: u32) -> vec2<f32> {
    workgroupBarrier();
    wg_mm_lo[lid] = lo;
    wg_mm_hi[lid] = hi;
    workgroupBarrier();
    for (var step = 128u; step > 0u; step = step / 2u) {
        if (lid < step) {
            wg_mm_lo[lid] = min(wg_mm_lo[lid], wg_mm_lo[lid + step]);
            wg_mm_hi[lid] = max(wg_mm_hi[lid], wg_mm_hi[lid + step]);
        }
        workgroupBarrier();
    }
    return vec2<f32>(wg_mm_lo[0], wg_mm_hi[0]);
}
