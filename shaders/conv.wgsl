// Conv2d forward as an implicit GEMM with fused fake-quant, bias and ReLU.
//
// Layout NCHW, weights [Cout, Cin/groups, KH, KW]. Per group g (workgroup z):
//   Y[co, col] = sum_k FQ(W)[co, k] * FQ(X)[k, col]
// with rows co in [0, Cout/groups), columns col = (n, oh, ow) over N*OH*OW and
// k = (ci, kh, kw) over Cin/groups*KH*KW. The X operand is gathered on the fly (im2col is
// never materialized); padding reads as 0.
// Tiling: WG invocations (override: 256, or 64 for small GEMMs), each a TM x TN = 4 x 4
// register block; TPM invocations along M (override: 4, 8 or 16), WG / TPM along N, so a
// workgroup tile is (4 TPM) x (4 WG / TPM) and BK = 8 values of k are staged in workgroup
// memory per step. Global loads put consecutive invocations on consecutive columns
// (coalesced); each invocation then owns 4 contiguous rows and 4 contiguous columns of the
// tile and reads them from workgroup memory as one vec4 each. BN <= WG (TPM >= 4).
// Flags (p.flags bits, uniform branches rather than override constants so that one pipeline
// per tile shape serves every combination): FQ_X, FQ_W, HAS_BIAS, RELU.
// FQ: q = clamp(round(v * inv_s) + z, qmin, qmax), (q - z) * s, inv_s read from the state.
// X is per tensor (state channel 0), W per output channel. A state with fq_on == 0 passes
// values through.

struct Params {
    n: u32, c_in: u32, h: u32, w: u32,
    c_out: u32, oh: u32, ow: u32, groups: u32,
    kh: u32, kw: u32, stride_h: u32, stride_w: u32,
    pad_h: u32, pad_w: u32, dil_h: u32, dil_w: u32,
    cin_g: u32, cout_g: u32, gemm_m: u32, gemm_n: u32,
    gemm_k: u32, k_chunk: u32, splits: u32, flags: u32,
    x_qmin: f32, x_qmax: f32, w_qmin: f32, w_qmax: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> xq: array<f32>;
@group(0) @binding(5) var<storage, read> wq: array<f32>;
@group(0) @binding(6) var<storage, read_write> y: array<f32>;

override WG: u32 = 256u;       // invocations per workgroup: 256 or 64
override TPM: u32 = 16u;       // invocations along M: 4, 8 or 16
// Fully unroll the BK loop (real GPUs). Off on lavapipe, where the unrolled shader takes
// about twice as long to compile at first dispatch and runs no faster.
override UNROLL: bool = true;

// Bits of p.flags.
const FQ_X: u32 = 1u;
const FQ_W: u32 = 2u;
const HAS_BIAS: u32 = 4u;
const RELU: u32 = 8u;
const BK: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> As: array<vec4<f32>, 136>;  // BK x (BM + 4) floats, read as vec4 (4 rows)
var<workgroup> Bs: array<vec4<f32>, 512>;  // BK x BN floats, read as vec4 (4 columns)
// k = (ci, kh, kw) decoded once per workgroup step (two slots, ping-pong): offset of the tap
// in X relative to the column's top-left input pixel, and its (h, w) displacement. Integer
// division is slow everywhere (scalarized on lavapipe), so it never runs per element.
var<workgroup> Kd: array<vec4<i32>, 16>;

fn kdecode(k: u32) -> vec4<i32> {
    let khw = p.kh * p.kw;
    let ci = k / khw;
    let r = k % khw;
    let dh = r / p.kw * p.dil_h;
    let dw = r % p.kw * p.dil_w;
    return vec4<i32>(i32(ci * p.h * p.w + dh * p.w + dw), i32(dh), i32(dw), 0);
}

// (s, inv_s, z) of output channel co of the weight quantizer.
fn wparams(co: u32) -> vec3<f32> {
    return vec3<f32>(wq[4u + co], wq[4u + p.c_out + co], wq[4u + 2u * p.c_out + co]);
}

fn fq(v: f32, s: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    return (clamp(round(v * inv_s) + z, qmin, qmax) - z) * s;
}

fn store_row(g: u32, row: u32, v: vec4<f32>, col0: u32, step: u32) {
    if (row >= p.gemm_m) { return; }
    let co = g * p.gemm_m + row;
    var b = 0.0;
    if ((p.flags & HAS_BIAS) != 0u) { b = bias[co]; }
    let ohw = p.oh * p.ow;
    for (var j = 0u; j < TN; j++) {
        let col = col0 + j * step;
        if (col < p.gemm_n) {
            var o = v[j] + b;
            if ((p.flags & RELU) != 0u) { o = max(o, 0.0); }
            y[(col / ohw * p.c_out + co) * ohw + col % ohw] = o;
        }
    }
}

@compute @workgroup_size(WG)
fn conv2d_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tpn = WG / TPM;
    // The BK loop bound: the constant BK, or an opaque equal value that stops unrolling.
    let kb = select(min(BK, p.n * BK), BK, UNROLL);
    let bm = TM * TPM;
    let bn = TN * tpn;
    let g = wid.z;
    let M = p.gemm_m;
    let N = p.gemm_n;
    // Tiles are numbered linearly over (x, y), M fastest, so that workgroups running
    // together share the same gathered columns.
    let m_tiles = (M + bm - 1u) / bm;
    let t = wid.x + wid.y * nwg.x;
    if (t >= m_tiles * ((N + bn - 1u) / bn)) { return; }
    let m0 = t % m_tiles * bm;
    let n0 = t / m_tiles * bn;
    let K = p.gemm_k;
    let ohw = p.oh * p.ow;

    var x_on = false;
    var xs = 1.0;
    var xinv = 1.0;
    var xz = 0.0;
    if ((p.flags & FQ_X) != 0u) {
        x_on = xq[0] != 0.0;
        xs = xq[4];
        xinv = xq[5];
        xz = xq[6];
    }
    var w_on = false;
    if ((p.flags & FQ_W) != 0u) { w_on = wq[0] != 0.0; }
    // The A-tile elements this invocation loads are e = lid + j * WG, in rows lid / BK +
    // j * WG / BK whatever the step: the weight quantizer parameters of the first two are
    // read once here (loads with computed indices are gathers on CPU adapters), later ones
    // (64-invocation tiles only) per element.
    var wq_a = vec3<f32>(1.0, 1.0, 0.0);
    var wq_b = wq_a;
    if (w_on) {
        wq_a = wparams(g * M + min(m0 + lid / BK, M - 1u));
        wq_b = wparams(g * M + min(m0 + (lid + WG) / BK, M - 1u));
    }

    // The column this invocation gathers from X, decoded once.
    let lc = lid % bn;
    let col = n0 + lc;
    let col_ok = col < N;
    let nb = col / ohw;
    let pp = col % ohw;
    let ih0 = i32(pp / p.ow * p.stride_h) - i32(p.pad_h);
    let iw0 = i32(pp % p.ow * p.stride_w) - i32(p.pad_w);
    let xbase = i32((nb * p.c_in + g * p.cin_g) * p.h * p.w) + ih0 * i32(p.w) + iw0;

    let tx = lid % tpn;
    let ty = lid / tpn;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    if (lid < BK) { Kd[lid] = kdecode(lid); }
    workgroupBarrier();
    var slot = 0u;
    for (var k0 = 0u; k0 < K; k0 += BK) {
        if (lid < BK) { Kd[BK - slot + lid] = kdecode(k0 + BK + lid); }
        // A tile: FQ(W) rows m0.., k contiguous in memory.
        var j = 0u;
        for (var e = lid; e < bm * BK; e += WG) {
            let m = e / BK;
            let kk = e % BK;
            let row = m0 + m;
            let k = k0 + kk;
            var v = 0.0;
            if (row < M && k < K) {
                let co = g * M + row;
                v = wt[co * K + k];
                if (w_on) {
                    var q = wq_a;
                    if (j == 1u) {
                        q = wq_b;
                    } else if (j > 1u) {
                        q = wparams(co);
                    }
                    v = fq(v, q.x, q.y, q.z, p.w_qmin, p.w_qmax);
                }
            }
            j++;
            let ai = kk * (bm + 4u) + m;
            As[ai / 4u][ai % 4u] = v;
        }
        // B tile: FQ(X) gathered, consecutive invocations on consecutive output pixels.
        for (var kk = lid / bn; kk < BK; kk += WG / bn) {
            let k = k0 + kk;
            var v = 0.0;
            let d = Kd[slot + kk];
            let ih = ih0 + d.y;
            let iw = iw0 + d.z;
            if (col_ok && k < K && ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
                v = x[u32(xbase + d.x)];
                if (x_on) { v = fq(v, xs, xinv, xz, p.x_qmin, p.x_qmax); }
            }
            let bi = kk * bn + lc;
            Bs[bi / 4u][bi % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < kb; kk++) {
            let a = As[kk * (bm + 4u) / 4u + ty];
            let b = Bs[kk * bn / 4u + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
        slot = BK - slot;
    }

    let col0 = n0 + tx * TN;
    store_row(g, m0 + ty * TM, acc0, col0, 1u);
    store_row(g, m0 + ty * TM + 1u, acc1, col0, 1u);
    store_row(g, m0 + ty * TM + 2u, acc2, col0, 1u);
    store_row(g, m0 + ty * TM + 3u, acc3, col0, 1u);
}
