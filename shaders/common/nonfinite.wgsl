// The training step's non-finite guard: `nonfinite(x)` is true for NaN and +-Inf; a kernel
// that finds one ORs METRICS_NONFINITE into word METRICS_FLAGS of the metrics buffer (an
// `array<atomic<u32>>` binding of its own), which the optimizer kernels read to skip the step.
const METRICS_FLAGS: u32 = 3u;
const METRICS_NONFINITE: u32 = 1u;

fn nonfinite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u;
}
