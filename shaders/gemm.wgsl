// fp32 GEMM with fused fake-quant of either operand and a fused epilogue.
//
// C[M,N] (+)= mask ⊙ relu(op(A') op(B') + bias), where
//   op(A) is A [M,K], or A stored [K,M] when TRANS_A;
//   op(B) is B [K,N], or B stored [N,K] when TRANS_B;
//   A' = fake_quant(A) when FQ_A (state qa; per channel along the ROWS of A's storage when PC_A),
//   B' likewise with qb / PC_B;
//   mask[i,j] = [qmin_m <= round(S[i,j] * inv_s) + z <= qmax_m] (STE of the mask source S [M,N],
//   state mq, per channel along rows of C when PC_M); a state whose fq_on flag is 0 passes through.
// SHARED: fake-quant is applied once per element as the tile is loaded into workgroup memory.
// Direct (SHARED false, lavapipe): operands are read from storage inside the K loop and each
// load is fake-quantized once (per-tensor and per-row/column parameters held in registers).
//
// Tiling: a workgroup of WGX x WGY threads computes a BM x BN tile (BM = WGY*TM, BN = WGX*4*TN4),
// stepping BK along K; thread (x, y) owns rows y + i*WGY and the 4-column groups x and x + WGX
// (strided, so reads and C writes are contiguous across threads). Accumulators are vec4s indexed
// by one loop only: lavapipe keeps those in registers, whereas a scalar [TM][TN] array walked by
// nested loops spills to memory and runs ~8x slower.
// Every binding is referenced (under override-constant branches) so the auto layout always holds
// all nine; the host binds A in place of the unused optional buffers.
// Quantizer state layout (src/quant.rs): [fq_on, obs_on, initialized, _, scale[C],
// inv_scale[C], zero_point[C], min[C], max[C]].

struct Params {
    m: u32,
    n: u32,
    k: u32,
    ca: u32, // channels of qa (1 = per tensor)
    cb: u32, // channels of qb
    cm: u32, // channels of mq
    _p0: u32,
    _p1: u32,
    qmin_a: f32,
    qmax_a: f32,
    qmin_b: f32,
    qmax_b: f32,
    qmin_m: f32,
    qmax_m: f32,
    _p2: f32,
    _p3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read> qa: array<f32>;
@group(0) @binding(6) var<storage, read> qb: array<f32>;
@group(0) @binding(7) var<storage, read> ms: array<f32>;
@group(0) @binding(8) var<storage, read> mq: array<f32>;

override WGX: u32 = 8u;
override WGY: u32 = 8u;
override TM: u32 = 8u; // at most 8 (acc holds TM*TN4 <= 16 vec4)
override TN4: u32 = 2u; // vec4 column groups per thread: 1 or 2
override BK: u32 = 16u; // BM*BK and BN*BK at most TILE_MAX
// Stage operand tiles in workgroup memory (real GPUs); false reads them straight from storage.
override SHARED: bool = true;
override TRANS_A: bool = false;
override TRANS_B: bool = false;
override FQ_A: bool = false;
override FQ_B: bool = false;
override PC_A: bool = false;
override PC_B: bool = false;
override BIAS: bool = false;
override RELU: bool = false;
override ACCUM: bool = false;
override MASK: bool = false;
override PC_M: bool = false;

const TILE_MAX: u32 = 1024u;

var<workgroup> As: array<f32, TILE_MAX>; // [BK][BM]
var<workgroup> Bs: array<vec4<f32>, TILE_MAX / 4u>; // [BK][BN/4]

// fq / fq4 (code then value) and fq_keeps (the STE mask).
// #include common/fake_quant.wgsl

fn fq_a(v: f32, row: u32, pt: vec3<f32>) -> f32 {
    if (PC_A) {
        return fq(v, qa[4u + row], qa[4u + p.ca + row], qa[4u + 2u * p.ca + row], p.qmin_a, p.qmax_a);
    }
    return fq(v, pt.x, pt.y, pt.z, p.qmin_a, p.qmax_a);
}

fn fq_b(v: f32, row: u32, pt: vec3<f32>) -> f32 {
    if (PC_B) {
        return fq(v, qb[4u + row], qb[4u + p.cb + row], qb[4u + 2u * p.cb + row], p.qmin_b, p.qmax_b);
    }
    return fq(v, pt.x, pt.y, pt.z, p.qmin_b, p.qmax_b);
}

// Epilogue of four adjacent outputs of row gm from column gn0: bias, ReLU, STE mask, accumulate.
// im = (inv_s, z) of the mask quantizer for this row.
fn store4(gm: u32, gn0: u32, acc: vec4<f32>, on_m: bool, im: vec2<f32>) {
    for (var j = 0u; j < 4u; j++) {
        let gn = gn0 + j;
        if (gn < p.n) {
            let idx = gm * p.n + gn;
            var v = acc[j];
            if (BIAS) {
                v += bias[gn];
            }
            if (RELU) {
                v = max(v, 0.0);
            }
            if (on_m) {
                v = select(0.0, v, fq_keeps(ms[idx], im.x, im.y, p.qmin_m, p.qmax_m));
            }
            if (ACCUM) {
                v += c[idx];
            }
            c[idx] = v;
        }
    }
}

@compute @workgroup_size(WGX, WGY)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let BM = WGY * TM;
    let BN = WGX * TN4 * 4u;
    let NT = WGX * WGY;
    let tid = lid.y * WGX + lid.x;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;

    // Runtime fake-quant switches (fq_on flags) and per-tensor parameters, read once.
    var on_a = false;
    var pt_a = vec3<f32>(1.0, 1.0, 0.0);
    if (FQ_A) {
        on_a = qa[0] != 0.0;
        pt_a = vec3<f32>(qa[4], qa[4u + p.ca], qa[4u + 2u * p.ca]);
    }
    var on_b = false;
    var pt_b = vec3<f32>(1.0, 1.0, 0.0);
    if (FQ_B) {
        on_b = qb[0] != 0.0;
        pt_b = vec3<f32>(qb[4], qb[4u + p.cb], qb[4u + 2u * p.cb]);
    }

    var acc: array<vec4<f32>, 16>; // [TM][TN4] vec4 column groups
    for (var i = 0u; i < TM * TN4; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    if (SHARED) {
        for (var k0 = 0u; k0 < p.k; k0 += BK) {
            // A tile -> As[kl*BM + ml], reading A's storage row by row.
            for (var e = tid; e < BM * BK; e += NT) {
                var ml: u32;
                var kl: u32;
                if (TRANS_A) {
                    kl = e / BM;
                    ml = e % BM;
                } else {
                    ml = e / BK;
                    kl = e % BK;
                }
                let gm = m0 + ml;
                let gk = k0 + kl;
                var v = 0.0;
                if (gm < p.m && gk < p.k) {
                    var idx = gm * p.k + gk;
                    var row = gm;
                    if (TRANS_A) {
                        idx = gk * p.m + gm;
                        row = gk;
                    }
                    v = a[idx];
                    if (on_a) {
                        v = fq_a(v, row, pt_a);
                    }
                }
                As[kl * BM + ml] = v;
            }
            // B tile -> Bs[kl*BN/4 + nl/4][nl%4].
            for (var e = tid; e < BN * BK; e += NT) {
                var nl: u32;
                var kl: u32;
                if (TRANS_B) {
                    nl = e / BK;
                    kl = e % BK;
                } else {
                    kl = e / BN;
                    nl = e % BN;
                }
                let gn = n0 + nl;
                let gk = k0 + kl;
                var v = 0.0;
                if (gn < p.n && gk < p.k) {
                    var idx = gk * p.n + gn;
                    var row = gk;
                    if (TRANS_B) {
                        idx = gn * p.k + gk;
                        row = gn;
                    }
                    v = b[idx];
                    if (on_b) {
                        v = fq_b(v, row, pt_b);
                    }
                }
                Bs[kl * (BN / 4u) + nl / 4u][nl % 4u] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk++) {
                let b0 = Bs[kk * (BN / 4u) + lid.x];
                var b1 = b0;
                if (TN4 == 2u) {
                    b1 = Bs[kk * (BN / 4u) + lid.x + WGX];
                }
                for (var i = 0u; i < TM; i++) {
                    let av = vec4<f32>(As[kk * BM + lid.y + i * WGY]);
                    acc[i * TN4] = fma(av, b0, acc[i * TN4]);
                    if (TN4 == 2u) {
                        acc[i * TN4 + 1u] = fma(av, b1, acc[i * TN4 + 1u]);
                    }
                }
            }
            workgroupBarrier();
        }
    } else {
        // Direct: operands read from storage inside the K loop, no workgroup memory or
        // barriers (fastest on lavapipe). Rows and columns are clamped into range: threads
        // past the edge compute values that the epilogue drops.
        let cn0 = min(vec4<u32>(n0 + lid.x * 4u) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
        let cn1 = min(vec4<u32>(n0 + (lid.x + WGX) * 4u) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
        // Per-column B quantizer parameters (B's rows are C's columns when TRANS_B).
        var sb0 = vec4<f32>(pt_b.x);
        var ib0 = vec4<f32>(pt_b.y);
        var zb0 = vec4<f32>(pt_b.z);
        var sb1 = sb0;
        var ib1 = ib0;
        var zb1 = zb0;
        if (PC_B && TRANS_B) {
            sb0 = vec4<f32>(qb[4u + cn0.x], qb[4u + cn0.y], qb[4u + cn0.z], qb[4u + cn0.w]);
            ib0 = vec4<f32>(qb[4u + p.cb + cn0.x], qb[4u + p.cb + cn0.y], qb[4u + p.cb + cn0.z], qb[4u + p.cb + cn0.w]);
            let o = 4u + 2u * p.cb;
            zb0 = vec4<f32>(qb[o + cn0.x], qb[o + cn0.y], qb[o + cn0.z], qb[o + cn0.w]);
            sb1 = vec4<f32>(qb[4u + cn1.x], qb[4u + cn1.y], qb[4u + cn1.z], qb[4u + cn1.w]);
            ib1 = vec4<f32>(qb[4u + p.cb + cn1.x], qb[4u + p.cb + cn1.y], qb[4u + p.cb + cn1.z], qb[4u + p.cb + cn1.w]);
            zb1 = vec4<f32>(qb[o + cn1.x], qb[o + cn1.y], qb[o + cn1.z], qb[o + cn1.w]);
        }
        // Per-row A quantizer parameters (A's rows are C's rows unless TRANS_A).
        var pa: array<vec3<f32>, 8>;
        for (var i = 0u; i < TM; i++) {
            pa[i] = pt_a;
            if (PC_A && !TRANS_A) {
                let gm = min(m0 + lid.y + i * WGY, p.m - 1u);
                pa[i] = vec3<f32>(qa[4u + gm], qa[4u + p.ca + gm], qa[4u + 2u * p.ca + gm]);
            }
        }
        for (var kk = 0u; kk < p.k; kk++) {
            var b0: vec4<f32>;
            var b1 = vec4<f32>(0.0);
            if (TRANS_B) {
                b0 = vec4<f32>(b[cn0.x * p.k + kk], b[cn0.y * p.k + kk], b[cn0.z * p.k + kk], b[cn0.w * p.k + kk]);
                if (TN4 == 2u) {
                    b1 = vec4<f32>(b[cn1.x * p.k + kk], b[cn1.y * p.k + kk], b[cn1.z * p.k + kk], b[cn1.w * p.k + kk]);
                }
            } else {
                let o = kk * p.n;
                b0 = vec4<f32>(b[o + cn0.x], b[o + cn0.y], b[o + cn0.z], b[o + cn0.w]);
                if (TN4 == 2u) {
                    b1 = vec4<f32>(b[o + cn1.x], b[o + cn1.y], b[o + cn1.z], b[o + cn1.w]);
                }
            }
            if (on_b) {
                if (PC_B && !TRANS_B) {
                    let q = vec3<f32>(qb[4u + kk], qb[4u + p.cb + kk], qb[4u + 2u * p.cb + kk]);
                    b0 = fq4(b0, vec4<f32>(q.x), vec4<f32>(q.y), vec4<f32>(q.z), p.qmin_b, p.qmax_b);
                    b1 = fq4(b1, vec4<f32>(q.x), vec4<f32>(q.y), vec4<f32>(q.z), p.qmin_b, p.qmax_b);
                } else {
                    b0 = fq4(b0, sb0, ib0, zb0, p.qmin_b, p.qmax_b);
                    b1 = fq4(b1, sb1, ib1, zb1, p.qmin_b, p.qmax_b);
                }
            }
            var qk = pt_a;
            if (on_a && PC_A && TRANS_A) {
                qk = vec3<f32>(qa[4u + kk], qa[4u + p.ca + kk], qa[4u + 2u * p.ca + kk]);
            }
            for (var i = 0u; i < TM; i++) {
                let gm = min(m0 + lid.y + i * WGY, p.m - 1u);
                var av: f32;
                if (TRANS_A) {
                    av = a[kk * p.m + gm];
                } else {
                    av = a[gm * p.k + kk];
                }
                if (on_a) {
                    var q = pa[i];
                    if (TRANS_A) {
                        q = qk;
                    }
                    av = fq(av, q.x, q.y, q.z, p.qmin_a, p.qmax_a);
                }
                let av4 = vec4<f32>(av);
                acc[i * TN4] = fma(av4, b0, acc[i * TN4]);
                if (TN4 == 2u) {
                    acc[i * TN4 + 1u] = fma(av4, b1, acc[i * TN4 + 1u]);
                }
            }
        }
    }

    // Epilogue: bias, ReLU, STE mask, accumulate.
    var on_m = false;
    var pt_m = vec2<f32>(1.0, 0.0);
    if (MASK) {
        on_m = mq[0] != 0.0;
        pt_m = vec2<f32>(mq[4u + p.cm], mq[4u + 2u * p.cm]);
    }
    for (var i = 0u; i < TM; i++) {
        let gm = m0 + lid.y + i * WGY;
        if (gm < p.m) {
            var im = pt_m;
            if (MASK && PC_M) {
                im = vec2<f32>(mq[4u + p.cm + gm], mq[4u + 2u * p.cm + gm]);
            }
            store4(gm, n0 + lid.x * 4u, acc[i * TN4], on_m, im);
            if (TN4 == 2u) {
                store4(gm, n0 + (lid.x + WGX) * 4u, acc[i * TN4 + 1u], on_m, im);
            }
        }
    }
}
