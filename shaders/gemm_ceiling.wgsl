// The benchmarks' ceiling microkernel: plain fp32 C[M,N] = A[M,K] B[K,N], row-major, with M a
// multiple of 64, N of 64 and K of 4 (no edge handling, no fake-quant): the fastest GEMM
// found for CPU adapters (lavapipe), timed next to the engine's own GEMM tiles by
// `wqat bench --kernels` (the `ceiling` row, best of the candidates).
//
// What makes it fast on lavapipe, measured: a storage load costs a loop over the 8 SIMD lanes
// (tens of cycles per load instruction, nearly whatever its width), so every load is a vec4;
// and an accumulator carried by the K loop is stored through memory under the execution mask
// on every update, so the four products of a k4 step are summed in registers before one
// update. Invocation (x, y) of an 8 x 8 workgroup computes 8 rows (m0 + y*8 ..) by two vec4
// column groups (x and x + 8 of the workgroup's 16), A read as vec4 along K, B along N.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c: array<vec4<f32>>;

// a.x * b0 + a.y * b1 + a.z * b2 + a.w * b3: one k4 step of one row and column group.
fn k4(av: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(av.w), b3, fma(vec4<f32>(av.z), b2, fma(vec4<f32>(av.y), b1, vec4<f32>(av.x) * b0)));
}

@compute @workgroup_size(8, 8)
fn gemm_ceiling(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k4n = p.k / 4u;
    let n4 = p.n / 4u;
    let m0 = (wid.y * 8u + lid.y) * 8u;
    let c0 = wid.x * 16u + lid.x;
    let c1 = c0 + 8u;
    var acc = array<vec4<f32>, 16>();
    for (var kq = 0u; kq < k4n; kq++) {
        let r = kq * 4u * n4;
        let b00 = b[r + c0];
        let b10 = b[r + n4 + c0];
        let b20 = b[r + 2u * n4 + c0];
        let b30 = b[r + 3u * n4 + c0];
        let b01 = b[r + c1];
        let b11 = b[r + n4 + c1];
        let b21 = b[r + 2u * n4 + c1];
        let b31 = b[r + 3u * n4 + c1];
        let a0 = a[m0 * k4n + kq];
        let a1 = a[(m0 + 1u) * k4n + kq];
        let a2 = a[(m0 + 2u) * k4n + kq];
        let a3 = a[(m0 + 3u) * k4n + kq];
        let a4 = a[(m0 + 4u) * k4n + kq];
        let a5 = a[(m0 + 5u) * k4n + kq];
        let a6 = a[(m0 + 6u) * k4n + kq];
        let a7 = a[(m0 + 7u) * k4n + kq];
        acc[0] += k4(a0, b00, b10, b20, b30);
        acc[1] += k4(a1, b00, b10, b20, b30);
        acc[2] += k4(a2, b00, b10, b20, b30);
        acc[3] += k4(a3, b00, b10, b20, b30);
        acc[4] += k4(a4, b00, b10, b20, b30);
        acc[5] += k4(a5, b00, b10, b20, b30);
        acc[6] += k4(a6, b00, b10, b20, b30);
        acc[7] += k4(a7, b00, b10, b20, b30);
        acc[8] += k4(a0, b01, b11, b21, b31);
        acc[9] += k4(a1, b01, b11, b21, b31);
        acc[10] += k4(a2, b01, b11, b21, b31);
        acc[11] += k4(a3, b01, b11, b21, b31);
        acc[12] += k4(a4, b01, b11, b21, b31);
        acc[13] += k4(a5, b01, b11, b21, b31);
        acc[14] += k4(a6, b01, b11, b21, b31);
        acc[15] += k4(a7, b01, b11, b21, b31);
    }
    // Constant indices only: a loop over acc would move it to memory.
    c[(m0 + 0u) * n4 + c0] = acc[0];
    c[(m0 + 0u) * n4 + c1] = acc[8];
    c[(m0 + 1u) * n4 + c0] = acc[1];
    c[(m0 + 1u) * n4 + c1] = acc[9];
    c[(m0 + 2u) * n4 + c0] = acc[2];
    c[(m0 + 2u) * n4 + c1] = acc[10];
    c[(m0 + 3u) * n4 + c0] = acc[3];
    c[(m0 + 3u) * n4 + c1] = acc[11];
    c[(m0 + 4u) * n4 + c0] = acc[4];
    c[(m0 + 4u) * n4 + c1] = acc[12];
    c[(m0 + 5u) * n4 + c0] = acc[5];
    c[(m0 + 5u) * n4 + c1] = acc[13];
    c[(m0 + 6u) * n4 + c0] = acc[6];
    c[(m0 + 6u) * n4 + c1] = acc[14];
    c[(m0 + 7u) * n4 + c0] = acc[7];
    c[(m0 + 7u) * n4 + c1] = acc[15];
}
