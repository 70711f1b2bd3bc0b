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

// ---------------------------------------------------------------------------------------------
// Strip kernel (entry `conv2d_strip`, CPU adapters; KW = 3, dilation 1 along W, stride_w SW = 1
// or 2). Lavapipe runs a workgroup on one thread, 8 invocations per SIMD vector, and every
// storage load whose address varies per invocation costs a scalar loop over the lanes (tens of
// cycles per load instruction, nearly whatever its width), so FMAs per load instruction decide
// speed. Here a workgroup owns SR = 8 output rows (channels) for 64 invocations; each
// invocation computes a strip of SP = 8 consecutive output pixels of one output row (n, oh) for
// those 8 channels (16 vec4 accumulators). Per (ci, kh) it loads the strip's input row segment
// once (SPAN = 7 SW + 3 values: 10 loads give 24 pixel-taps) and reads the 8 channels' weights
// of each tap as two vec4s from workgroup memory, where the workgroup stages FQ(W) (each weight
// fake-quantized once per workgroup instead of once per use) for up to SKC taps at a time.
// TRANSPOSE runs the data gradient of a stride-1 convolution as this forward: the host passes
// the geometry of the equivalent forward conv (input dY, output dX, padding KH-1-pad, channel
// counts swapped) and the weights are read transposed and flipped, cin_g / cout_g of the
// params then being the REAL conv's cout_g / cin_g; binding 3 holds the STE mask values
// (forward input x) and binding 4 their quantizer state (flags MASK, ACCUM).

override SW: u32 = 1u;          // stride along W: 1 or 2
override TRANSPOSE: bool = false;

const SR: u32 = 8u;             // output channels per workgroup
const SWG: u32 = 64u;           // invocations per workgroup
const SKC: u32 = 512u;          // taps staged per chunk (SR floats each)

var<workgroup> Ws: array<vec4<f32>, 1024>;  // [tap][2] vec4: FQ(W) of the SR rows

// FQ(W) of (virtual) output row `row` (< gemm_m) and tap `tap` of group g (0 past the rows).
fn strip_weight(g: u32, row: u32, tap: u32, w_on: bool) -> f32 {
    if (row >= p.gemm_m) { return 0.0; }
    let khw = p.kh * p.kw;
    var co: u32;
    var idx: u32;
    var n = p.c_out;
    if (TRANSPOSE) {
        // Real weights [Cout_real, Cin_real/groups, KH, KW]; real cout_g = p.cin_g, real
        // cin_g = p.cout_g = gemm_m; the tap runs over (real co, kh, kw), flipped.
        co = g * p.cin_g + tap / khw;
        idx = (co * p.cout_g + row) * khw + khw - 1u - tap % khw;
        n = p.c_in;
    } else {
        co = g * p.gemm_m + row;
        idx = co * p.gemm_k + tap;
    }
    var v = wt[idx];
    if (w_on) {
        var c = co;
        if ((p.flags & W_PER_TENSOR) != 0u) { c = 0u; n = 1u; }
        v = fq(v, wq[4u + c], wq[4u + n + c], wq[4u + 2u * n + c], p.w_qmin, p.w_qmax);
    }
    return v;
}

// A kernel row's taps: FQ(W) of the SR rows at kw = 0, 1, 2 (rows 0..3 in lN, 4..7 in hN),
// and a strip's inputs under them (xN: pixels 0..3 at tap N, yN: pixels 4..7).
struct Taps { l0: vec4<f32>, h0: vec4<f32>, l1: vec4<f32>, h1: vec4<f32>, l2: vec4<f32>, h2: vec4<f32> }
struct Row { x0: vec4<f32>, y0: vec4<f32>, x1: vec4<f32>, y1: vec4<f32>, x2: vec4<f32>, y2: vec4<f32> }

fn taps(wi: u32) -> Taps {
    return Taps(Ws[wi], Ws[wi + 1u], Ws[wi + 2u], Ws[wi + 3u], Ws[wi + 4u], Ws[wi + 5u]);
}

// The input row segment of a strip (row start rb in x, first column iw0) under the three
// taps, unrolled: a private array indexed in a loop would live in memory.
fn strip_row(rb: i32, iw0: i32, ok_h: bool, x_on: bool, xp: vec3<f32>) -> Row {
    let x0 = strip_load(rb, iw0, 0, ok_h, x_on, xp);
    let x1 = strip_load(rb, iw0, 1, ok_h, x_on, xp);
    let x2 = strip_load(rb, iw0, 2, ok_h, x_on, xp);
    let x3 = strip_load(rb, iw0, 3, ok_h, x_on, xp);
    let x4 = strip_load(rb, iw0, 4, ok_h, x_on, xp);
    let x5 = strip_load(rb, iw0, 5, ok_h, x_on, xp);
    let x6 = strip_load(rb, iw0, 6, ok_h, x_on, xp);
    let x7 = strip_load(rb, iw0, 7, ok_h, x_on, xp);
    let x8 = strip_load(rb, iw0, 8, ok_h, x_on, xp);
    let x9 = strip_load(rb, iw0, 9, ok_h, x_on, xp);
    if (SW == 1u) {
        return Row(vec4<f32>(x0, x1, x2, x3), vec4<f32>(x4, x5, x6, x7), vec4<f32>(x1, x2, x3, x4),
            vec4<f32>(x5, x6, x7, x8), vec4<f32>(x2, x3, x4, x5), vec4<f32>(x6, x7, x8, x9));
    }
    let x10 = strip_load(rb, iw0, 10, ok_h, x_on, xp);
    let x11 = strip_load(rb, iw0, 11, ok_h, x_on, xp);
    let x12 = strip_load(rb, iw0, 12, ok_h, x_on, xp);
    let x13 = strip_load(rb, iw0, 13, ok_h, x_on, xp);
    let x14 = strip_load(rb, iw0, 14, ok_h, x_on, xp);
    let x15 = strip_load(rb, iw0, 15, ok_h, x_on, xp);
    let x16 = strip_load(rb, iw0, 16, ok_h, x_on, xp);
    return Row(vec4<f32>(x0, x2, x4, x6), vec4<f32>(x8, x10, x12, x14), vec4<f32>(x1, x3, x5, x7),
        vec4<f32>(x9, x11, x13, x15), vec4<f32>(x2, x4, x6, x8), vec4<f32>(x10, x12, x14, x16));
}

// Sum of the three taps of kernel row (w, r) for accumulator i (row c of half l/h, pixels x/y).

// acc += the taps of one kernel row. The sum is formed in registers first: lavapipe stores a
// loop-carried accumulator through memory under the execution mask on every update, so
// one update per accumulator and kernel row costs far less than one per tap.
fn fma_row(acc: ptr<function, array<vec4<f32>, 16>>, w0: Taps, r0: Row) {
    (*acc)[0] += fma(vec4<f32>(w0.l2.x), r0.x2, fma(vec4<f32>(w0.l1.x), r0.x1, vec4<f32>(w0.l0.x) * r0.x0));
    (*acc)[1] += fma(vec4<f32>(w0.l2.y), r0.x2, fma(vec4<f32>(w0.l1.y), r0.x1, vec4<f32>(w0.l0.y) * r0.x0));
    (*acc)[2] += fma(vec4<f32>(w0.l2.z), r0.x2, fma(vec4<f32>(w0.l1.z), r0.x1, vec4<f32>(w0.l0.z) * r0.x0));
    (*acc)[3] += fma(vec4<f32>(w0.l2.w), r0.x2, fma(vec4<f32>(w0.l1.w), r0.x1, vec4<f32>(w0.l0.w) * r0.x0));
    (*acc)[4] += fma(vec4<f32>(w0.h2.x), r0.x2, fma(vec4<f32>(w0.h1.x), r0.x1, vec4<f32>(w0.h0.x) * r0.x0));
    (*acc)[5] += fma(vec4<f32>(w0.h2.y), r0.x2, fma(vec4<f32>(w0.h1.y), r0.x1, vec4<f32>(w0.h0.y) * r0.x0));
    (*acc)[6] += fma(vec4<f32>(w0.h2.z), r0.x2, fma(vec4<f32>(w0.h1.z), r0.x1, vec4<f32>(w0.h0.z) * r0.x0));
    (*acc)[7] += fma(vec4<f32>(w0.h2.w), r0.x2, fma(vec4<f32>(w0.h1.w), r0.x1, vec4<f32>(w0.h0.w) * r0.x0));
    (*acc)[8] += fma(vec4<f32>(w0.l2.x), r0.y2, fma(vec4<f32>(w0.l1.x), r0.y1, vec4<f32>(w0.l0.x) * r0.y0));
    (*acc)[9] += fma(vec4<f32>(w0.l2.y), r0.y2, fma(vec4<f32>(w0.l1.y), r0.y1, vec4<f32>(w0.l0.y) * r0.y0));
    (*acc)[10] += fma(vec4<f32>(w0.l2.z), r0.y2, fma(vec4<f32>(w0.l1.z), r0.y1, vec4<f32>(w0.l0.z) * r0.y0));
    (*acc)[11] += fma(vec4<f32>(w0.l2.w), r0.y2, fma(vec4<f32>(w0.l1.w), r0.y1, vec4<f32>(w0.l0.w) * r0.y0));
    (*acc)[12] += fma(vec4<f32>(w0.h2.x), r0.y2, fma(vec4<f32>(w0.h1.x), r0.y1, vec4<f32>(w0.h0.x) * r0.y0));
    (*acc)[13] += fma(vec4<f32>(w0.h2.y), r0.y2, fma(vec4<f32>(w0.h1.y), r0.y1, vec4<f32>(w0.h0.y) * r0.y0));
    (*acc)[14] += fma(vec4<f32>(w0.h2.z), r0.y2, fma(vec4<f32>(w0.h1.z), r0.y1, vec4<f32>(w0.h0.z) * r0.y0));
    (*acc)[15] += fma(vec4<f32>(w0.h2.w), r0.y2, fma(vec4<f32>(w0.h1.w), r0.y1, vec4<f32>(w0.h0.w) * r0.y0));
}

// acc += the taps of three kernel rows (KH = 3): one update per accumulator and input channel.
fn fma_rows3(acc: ptr<function, array<vec4<f32>, 16>>, w0: Taps, r0: Row, w1: Taps, r1: Row, w2: Taps, r2: Row) {
    (*acc)[0] += fma(vec4<f32>(w0.l2.x), r0.x2, fma(vec4<f32>(w0.l1.x), r0.x1, vec4<f32>(w0.l0.x) * r0.x0))
        + fma(vec4<f32>(w1.l2.x), r1.x2, fma(vec4<f32>(w1.l1.x), r1.x1, vec4<f32>(w1.l0.x) * r1.x0))
        + fma(vec4<f32>(w2.l2.x), r2.x2, fma(vec4<f32>(w2.l1.x), r2.x1, vec4<f32>(w2.l0.x) * r2.x0));
    (*acc)[1] += fma(vec4<f32>(w0.l2.y), r0.x2, fma(vec4<f32>(w0.l1.y), r0.x1, vec4<f32>(w0.l0.y) * r0.x0))
        + fma(vec4<f32>(w1.l2.y), r1.x2, fma(vec4<f32>(w1.l1.y), r1.x1, vec4<f32>(w1.l0.y) * r1.x0))
        + fma(vec4<f32>(w2.l2.y), r2.x2, fma(vec4<f32>(w2.l1.y), r2.x1, vec4<f32>(w2.l0.y) * r2.x0));
    (*acc)[2] += fma(vec4<f32>(w0.l2.z), r0.x2, fma(vec4<f32>(w0.l1.z), r0.x1, vec4<f32>(w0.l0.z) * r0.x0))
        + fma(vec4<f32>(w1.l2.z), r1.x2, fma(vec4<f32>(w1.l1.z), r1.x1, vec4<f32>(w1.l0.z) * r1.x0))
        + fma(vec4<f32>(w2.l2.z), r2.x2, fma(vec4<f32>(w2.l1.z), r2.x1, vec4<f32>(w2.l0.z) * r2.x0));
    (*acc)[3] += fma(vec4<f32>(w0.l2.w), r0.x2, fma(vec4<f32>(w0.l1.w), r0.x1, vec4<f32>(w0.l0.w) * r0.x0))
        + fma(vec4<f32>(w1.l2.w), r1.x2, fma(vec4<f32>(w1.l1.w), r1.x1, vec4<f32>(w1.l0.w) * r1.x0))
        + fma(vec4<f32>(w2.l2.w), r2.x2, fma(vec4<f32>(w2.l1.w), r2.x1, vec4<f32>(w2.l0.w) * r2.x0));
    (*acc)[4] += fma(vec4<f32>(w0.h2.x), r0.x2, fma(vec4<f32>(w0.h1.x), r0.x1, vec4<f32>(w0.h0.x) * r0.x0))
        + fma(vec4<f32>(w1.h2.x), r1.x2, fma(vec4<f32>(w1.h1.x), r1.x1, vec4<f32>(w1.h0.x) * r1.x0))
        + fma(vec4<f32>(w2.h2.x), r2.x2, fma(vec4<f32>(w2.h1.x), r2.x1, vec4<f32>(w2.h0.x) * r2.x0));
    (*acc)[5] += fma(vec4<f32>(w0.h2.y), r0.x2, fma(vec4<f32>(w0.h1.y), r0.x1, vec4<f32>(w0.h0.y) * r0.x0))
        + fma(vec4<f32>(w1.h2.y), r1.x2, fma(vec4<f32>(w1.h1.y), r1.x1, vec4<f32>(w1.h0.y) * r1.x0))
        + fma(vec4<f32>(w2.h2.y), r2.x2, fma(vec4<f32>(w2.h1.y), r2.x1, vec4<f32>(w2.h0.y) * r2.x0));
    (*acc)[6] += fma(vec4<f32>(w0.h2.z), r0.x2, fma(vec4<f32>(w0.h1.z), r0.x1, vec4<f32>(w0.h0.z) * r0.x0))
        + fma(vec4<f32>(w1.h2.z), r1.x2, fma(vec4<f32>(w1.h1.z), r1.x1, vec4<f32>(w1.h0.z) * r1.x0))
        + fma(vec4<f32>(w2.h2.z), r2.x2, fma(vec4<f32>(w2.h1.z), r2.x1, vec4<f32>(w2.h0.z) * r2.x0));
    (*acc)[7] += fma(vec4<f32>(w0.h2.w), r0.x2, fma(vec4<f32>(w0.h1.w), r0.x1, vec4<f32>(w0.h0.w) * r0.x0))
        + fma(vec4<f32>(w1.h2.w), r1.x2, fma(vec4<f32>(w1.h1.w), r1.x1, vec4<f32>(w1.h0.w) * r1.x0))
        + fma(vec4<f32>(w2.h2.w), r2.x2, fma(vec4<f32>(w2.h1.w), r2.x1, vec4<f32>(w2.h0.w) * r2.x0));
    (*acc)[8] += fma(vec4<f32>(w0.l2.x), r0.y2, fma(vec4<f32>(w0.l1.x), r0.y1, vec4<f32>(w0.l0.x) * r0.y0))
        + fma(vec4<f32>(w1.l2.x), r1.y2, fma(vec4<f32>(w1.l1.x), r1.y1, vec4<f32>(w1.l0.x) * r1.y0))
        + fma(vec4<f32>(w2.l2.x), r2.y2, fma(vec4<f32>(w2.l1.x), r2.y1, vec4<f32>(w2.l0.x) * r2.y0));
    (*acc)[9] += fma(vec4<f32>(w0.l2.y), r0.y2, fma(vec4<f32>(w0.l1.y), r0.y1, vec4<f32>(w0.l0.y) * r0.y0))
        + fma(vec4<f32>(w1.l2.y), r1.y2, fma(vec4<f32>(w1.l1.y), r1.y1, vec4<f32>(w1.l0.y) * r1.y0))
        + fma(vec4<f32>(w2.l2.y), r2.y2, fma(vec4<f32>(w2.l1.y), r2.y1, vec4<f32>(w2.l0.y) * r2.y0));
    (*acc)[10] += fma(vec4<f32>(w0.l2.z), r0.y2, fma(vec4<f32>(w0.l1.z), r0.y1, vec4<f32>(w0.l0.z) * r0.y0))
        + fma(vec4<f32>(w1.l2.z), r1.y2, fma(vec4<f32>(w1.l1.z), r1.y1, vec4<f32>(w1.l0.z) * r1.y0))
        + fma(vec4<f32>(w2.l2.z), r2.y2, fma(vec4<f32>(w2.l1.z), r2.y1, vec4<f32>(w2.l0.z) * r2.y0));
    (*acc)[11] += fma(vec4<f32>(w0.l2.w), r0.y2, fma(vec4<f32>(w0.l1.w), r0.y1, vec4<f32>(w0.l0.w) * r0.y0))
        + fma(vec4<f32>(w1.l2.w), r1.y2, fma(vec4<f32>(w1.l1.w), r1.y1, vec4<f32>(w1.l0.w) * r1.y0))
        + fma(vec4<f32>(w2.l2.w), r2.y2, fma(vec4<f32>(w2.l1.w), r2.y1, vec4<f32>(w2.l0.w) * r2.y0));
    (*acc)[12] += fma(vec4<f32>(w0.h2.x), r0.y2, fma(vec4<f32>(w0.h1.x), r0.y1, vec4<f32>(w0.h0.x) * r0.y0))
        + fma(vec4<f32>(w1.h2.x), r1.y2, fma(vec4<f32>(w1.h1.x), r1.y1, vec4<f32>(w1.h0.x) * r1.y0))
        + fma(vec4<f32>(w2.h2.x), r2.y2, fma(vec4<f32>(w2.h1.x), r2.y1, vec4<f32>(w2.h0.x) * r2.y0));
    (*acc)[13] += fma(vec4<f32>(w0.h2.y), r0.y2, fma(vec4<f32>(w0.h1.y), r0.y1, vec4<f32>(w0.h0.y) * r0.y0))
        + fma(vec4<f32>(w1.h2.y), r1.y2, fma(vec4<f32>(w1.h1.y), r1.y1, vec4<f32>(w1.h0.y) * r1.y0))
        + fma(vec4<f32>(w2.h2.y), r2.y2, fma(vec4<f32>(w2.h1.y), r2.y1, vec4<f32>(w2.h0.y) * r2.y0));
    (*acc)[14] += fma(vec4<f32>(w0.h2.z), r0.y2, fma(vec4<f32>(w0.h1.z), r0.y1, vec4<f32>(w0.h0.z) * r0.y0))
        + fma(vec4<f32>(w1.h2.z), r1.y2, fma(vec4<f32>(w1.h1.z), r1.y1, vec4<f32>(w1.h0.z) * r1.y0))
        + fma(vec4<f32>(w2.h2.z), r2.y2, fma(vec4<f32>(w2.h1.z), r2.y1, vec4<f32>(w2.h0.z) * r2.y0));
    (*acc)[15] += fma(vec4<f32>(w0.h2.w), r0.y2, fma(vec4<f32>(w0.h1.w), r0.y1, vec4<f32>(w0.h0.w) * r0.y0))
        + fma(vec4<f32>(w1.h2.w), r1.y2, fma(vec4<f32>(w1.h1.w), r1.y1, vec4<f32>(w1.h0.w) * r1.y0))
        + fma(vec4<f32>(w2.h2.w), r2.y2, fma(vec4<f32>(w2.h1.w), r2.y1, vec4<f32>(w2.h0.w) * r2.y0));
}



@compute @workgroup_size(64)
fn conv2d_strip(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let g = wid.z;
    let M = p.gemm_m;
    let m_tiles = (M + SR - 1u) / SR;
    let spr = (p.ow + 7u) / 8u;
    let strips = p.n * p.oh * spr;
    let t = wid.x + wid.y * nwg.x;
    if (t >= m_tiles * ((strips + SWG - 1u) / SWG)) { return; }
    let r0 = t % m_tiles * SR;
    let s = t / m_tiles * SWG + lid;
    let valid = s < strips;
    let sc = min(s, strips - 1u);
    let per_n = p.oh * spr;
    let nb = sc / per_n;
    let rem = sc % per_n;
    let oh = rem / spr;
    let ow0 = rem % spr * 8u;
    let hw = p.h * p.w;
    let xb = (nb * p.c_in + g * p.cin_g) * hw;
    let ih0 = i32(oh * p.stride_h) - i32(p.pad_h);
    let iw0 = i32(ow0 * SW) - i32(p.pad_w);

    var x_on = false;
    var xp = vec3<f32>(1.0, 1.0, 0.0);
    if (!TRANSPOSE && (p.flags & FQ_X) != 0u) {
        x_on = xq[0] != 0.0;
        xp = vec3<f32>(xq[4], xq[5], xq[6]);
    }
    var w_on = false;
    if ((p.flags & FQ_W) != 0u) { w_on = wq[0] != 0.0; }

    let khw = p.kh * 3u;
    let cc = max(SKC / khw, 1u);
    var acc = array<vec4<f32>, 16>();
    let wrow = i32(p.w);
    let dh = i32(p.dil_h) * wrow;
    for (var c0 = 0u; c0 < p.cin_g; c0 += cc) {
        let c1 = min(c0 + cc, p.cin_g);
        let nt = (c1 - c0) * khw;
        workgroupBarrier();
        for (var e = lid; e < nt * SR; e += SWG) {
            let r = e & 7u;
            let v = strip_weight(g, r0 + r, c0 * khw + (e >> 3u), w_on);
            Ws[(e >> 3u) * 2u + (r >> 2u)][r & 3u] = v;
        }
        workgroupBarrier();
        for (var ci = c0; ci < c1; ci++) {
            let rb = i32(xb + ci * hw) + ih0 * wrow + iw0;
            let wi = (ci - c0) * khw * 2u;
            if (p.kh == 3u) {
                let ih1 = ih0 + i32(p.dil_h);
                let ih2 = ih1 + i32(p.dil_h);
                let a = strip_row(rb, iw0, valid && ih0 >= 0 && ih0 < i32(p.h), x_on, xp);
                let b = strip_row(rb + dh, iw0, valid && ih1 >= 0 && ih1 < i32(p.h), x_on, xp);
                let c = strip_row(rb + 2 * dh, iw0, valid && ih2 >= 0 && ih2 < i32(p.h), x_on, xp);
                fma_rows3(&acc, taps(wi), a, taps(wi + 6u), b, taps(wi + 12u), c);
            } else {
                for (var kh = 0u; kh < p.kh; kh++) {
                    let ih = ih0 + i32(kh * p.dil_h);
                    let r = strip_row(rb + i32(kh) * dh, iw0, valid && ih >= 0 && ih < i32(p.h), x_on, xp);
                    fma_row(&acc, taps(wi + kh * 6u), r);
                }
            }
        }
    }

    if (!valid) { return; }
    var m_on = false;
    var minv = 1.0;
    var mz = 0.0;
    if (TRANSPOSE && (p.flags & MASK) != 0u) {
        m_on = xq[0] != 0.0;
        minv = xq[5];
        mz = xq[6];
    }
    let st = StripOut(nb, oh, ow0, g, r0, m_on, minv, mz);
    strip_store(st, 0u, acc[0], acc[8]);
    strip_store(st, 1u, acc[1], acc[9]);
    strip_store(st, 2u, acc[2], acc[10]);
    strip_store(st, 3u, acc[3], acc[11]);
    strip_store(st, 4u, acc[4], acc[12]);
    strip_store(st, 5u, acc[5], acc[13]);
    strip_store(st, 6u, acc[6], acc[14]);
    strip_store(st, 7u, acc[7], acc[15]);
}

// Input value t of a strip's row segment (row start rb, first column iw0): 0 outside the
// image, fake-quantized when x_on.
fn strip_load(rb: i32, iw0: i32, t: i32, ok_h: bool, x_on: bool, xp: vec3<f32>) -> f32 {
    let iw = iw0 + t;
    let inside = ok_h && iw >= 0 && iw < i32(p.w);
    var v = select(0.0, x[u32(select(0, rb + t, inside))], inside);
    if (x_on) { v = fq(v, xp.x, xp.y, xp.z, p.x_qmin, p.x_qmax); }
    return v;
}

// Where a strip's outputs go, and the STE mask parameters (TRANSPOSE).
struct StripOut {
    nb: u32,
    oh: u32,
    ow0: u32,
    g: u32,
    r0: u32,
    m_on: bool,
    minv: f32,
    mz: f32,
}

// Epilogue of row r0 + r of a strip: pixels 0..3 in lo, 4..7 in hi.
fn strip_store(st: StripOut, r: u32, lo: vec4<f32>, hi: vec4<f32>) {
    let row = st.r0 + r;
    if (row >= p.gemm_m) { return; }
    let co = st.g * p.gemm_m + row;
    var b = 0.0;
    if (!TRANSPOSE && (p.flags & HAS_BIAS) != 0u) { b = bias[co]; }
    let base = ((st.nb * p.c_out + co) * p.oh + st.oh) * p.ow + st.ow0;
    for (var j = 0u; j < 8u; j++) {
        if (st.ow0 + j < p.ow) {
            var o = select(hi[j & 3u], lo[j & 3u], j < 4u) + b;
            if (TRANSPOSE) {
                if (st.m_on) {
                    o = select(0.0, o, fq_keeps(bias[base + j], st.minv, st.mz, p.x_qmin, p.x_qmax));
                }
                if ((p.flags & ACCUM) != 0u) { o += y[base + j]; }
            } else if ((p.flags & RELU) != 0u) {
                o = max(o, 0.0);
            }
            y[base + j] = o;
        }
    }
}
