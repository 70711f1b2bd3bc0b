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

// #include common/conv_params.wgsl
// #include common/fake_quant.wgsl

@group(0) @binding(0) var<uniform> p: ConvParams;
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
// CPU adapters (lavapipe): no workgroup memory or barriers (they cost more than they save
// there); each invocation computes 4 rows x 8 columns straight from storage (see
// `forward_direct`). TPM is then the number of invocations along M, WG / TPM along N.
override DIRECT: bool = false;

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

// (s, inv_s, z) of output channel co of the weight quantizer (channel 0 of a per-tensor one).
fn wparams(co: u32) -> vec3<f32> {
    var c = co;
    var n = p.c_out;
    if ((p.flags & W_PER_TENSOR) != 0u) { c = 0u; n = 1u; }
    return vec3<f32>(wq[4u + c], wq[4u + n + c], wq[4u + 2u * n + c]);
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

// One input value of the column group at (ih, iw) (vec4 lanes), 0 outside the image or past
// the last column.
fn gather4(xb: vec4<i32>, ih: vec4<i32>, iw: vec4<i32>, ok: vec4<bool>) -> vec4<f32> {
    let inside = ok & (ih >= vec4<i32>(0)) & (ih < vec4<i32>(i32(p.h))) & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(p.w)));
    let idx = select(vec4<i32>(0), xb + ih * i32(p.w) + iw, inside);
    let v = vec4<f32>(x[u32(idx.x)], x[u32(idx.y)], x[u32(idx.z)], x[u32(idx.w)]);
    return select(vec4<f32>(0.0), v, inside);
}

// Decoded output columns of one vec4 group starting at col0: the input offset of each
// column's image and channel group, its top-left input row and column, and which exist.
struct Cols {
    xb: vec4<i32>,
    ih0: vec4<i32>,
    iw0: vec4<i32>,
    ok: vec4<bool>,
}

fn decode_cols(col0: u32, g: u32) -> Cols {
    var c: Cols;
    let ohw = p.oh * p.ow;
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        let cc = min(col, p.gemm_n - 1u);
        let nb = cc / ohw;
        let pp = cc % ohw;
        c.xb[j] = i32((nb * p.c_in + g * p.cin_g) * p.h * p.w);
        c.ih0[j] = i32(pp / p.ow * p.stride_h) - i32(p.pad_h);
        c.iw0[j] = i32(pp % p.ow * p.stride_w) - i32(p.pad_w);
        c.ok[j] = col < p.gemm_n;
    }
    return c;
}

// The direct forward (DIRECT): invocation (tx, ty) of the tile computes rows
// m0 + 4 ty .. + 3 and the column groups n0 + 4 tx and n0 + 4 (tx + WG / TPM) (strided, so
// neighbouring invocations take neighbouring pixels), looping over k = (ci, kh, kw) in nested
// loops (no integer division per step). W's quantizer parameters are read once per row.
fn forward_direct(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) {
    let tpn = WG / TPM;
    let bm = 4u * TPM;
    let bn = 8u * tpn;
    let g = wid.z;
    let M = p.gemm_m;
    let N = p.gemm_n;
    let K = p.gemm_k;
    let m_tiles = (M + bm - 1u) / bm;
    let t = wid.x + wid.y * nwg.x;
    if (t >= m_tiles * ((N + bn - 1u) / bn)) { return; }
    let m0 = t % m_tiles * bm;
    let n0 = t / m_tiles * bn;
    let tx = lid % tpn;
    let ty = lid / tpn;

    var x_on = false;
    var xp = vec3<f32>(1.0, 1.0, 0.0);
    if ((p.flags & FQ_X) != 0u) {
        x_on = xq[0] != 0.0;
        xp = vec3<f32>(xq[4], xq[5], xq[6]);
    }
    var w_on = false;
    if ((p.flags & FQ_W) != 0u) { w_on = wq[0] != 0.0; }
    let row = m0 + ty * 4u;
    // Weight rows (clamped into range; rows past M are computed and dropped).
    let r0 = g * M + min(row, M - 1u);
    let r1 = g * M + min(row + 1u, M - 1u);
    let r2 = g * M + min(row + 2u, M - 1u);
    let r3 = g * M + min(row + 3u, M - 1u);
    var q0 = vec3<f32>(1.0, 1.0, 0.0);
    var q1 = q0;
    var q2 = q0;
    var q3 = q0;
    if (w_on) {
        q0 = wparams(r0);
        q1 = wparams(r1);
        q2 = wparams(r2);
        q3 = wparams(r3);
    }
    let ca = decode_cols(n0 + tx * 4u, g);
    let cb = decode_cols(n0 + (tx + tpn) * 4u, g);

    var a0 = vec4<f32>(0.0);
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var b0 = a0;
    var b1 = a0;
    var b2 = a0;
    var b3 = a0;
    let hw = i32(p.h * p.w);
    var k = 0u;
    for (var ci = 0u; ci < p.cin_g; ci++) {
        let xo = i32(ci) * hw;
        for (var kh = 0u; kh < p.kh; kh++) {
            let dh = i32(kh * p.dil_h);
            let iha = ca.ih0 + vec4<i32>(dh);
            let ihb = cb.ih0 + vec4<i32>(dh);
            for (var kw = 0u; kw < p.kw; kw++) {
                let dw = i32(kw * p.dil_w);
                var xa = gather4(ca.xb + vec4<i32>(xo), iha, ca.iw0 + vec4<i32>(dw), ca.ok);
                var xb = gather4(cb.xb + vec4<i32>(xo), ihb, cb.iw0 + vec4<i32>(dw), cb.ok);
                if (x_on) {
                    xa = fq4(xa, vec4<f32>(xp.x), vec4<f32>(xp.y), vec4<f32>(xp.z), p.x_qmin, p.x_qmax);
                    xb = fq4(xb, vec4<f32>(xp.x), vec4<f32>(xp.y), vec4<f32>(xp.z), p.x_qmin, p.x_qmax);
                }
                var w0 = wt[r0 * K + k];
                var w1 = wt[r1 * K + k];
                var w2 = wt[r2 * K + k];
                var w3 = wt[r3 * K + k];
                if (w_on) {
                    w0 = fq(w0, q0.x, q0.y, q0.z, p.w_qmin, p.w_qmax);
                    w1 = fq(w1, q1.x, q1.y, q1.z, p.w_qmin, p.w_qmax);
                    w2 = fq(w2, q2.x, q2.y, q2.z, p.w_qmin, p.w_qmax);
                    w3 = fq(w3, q3.x, q3.y, q3.z, p.w_qmin, p.w_qmax);
                }
                a0 = fma(vec4<f32>(w0), xa, a0);
                a1 = fma(vec4<f32>(w1), xa, a1);
                a2 = fma(vec4<f32>(w2), xa, a2);
                a3 = fma(vec4<f32>(w3), xa, a3);
                b0 = fma(vec4<f32>(w0), xb, b0);
                b1 = fma(vec4<f32>(w1), xb, b1);
                b2 = fma(vec4<f32>(w2), xb, b2);
                b3 = fma(vec4<f32>(w3), xb, b3);
                k++;
            }
        }
    }
    let cola = n0 + tx * 4u;
    let colb = n0 + (tx + tpn) * 4u;
    store_row(g, row, a0, cola, 1u);
    store_row(g, row + 1u, a1, cola, 1u);
    store_row(g, row + 2u, a2, cola, 1u);
    store_row(g, row + 3u, a3, cola, 1u);
    store_row(g, row, b0, colb, 1u);
    store_row(g, row + 1u, b1, colb, 1u);
    store_row(g, row + 2u, b2, colb, 1u);
    store_row(g, row + 3u, b3, colb, 1u);
}

@compute @workgroup_size(WG)
fn conv2d_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (DIRECT) {
        forward_direct(lid, wid, nwg);
        return;
    }
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
