// Conv2d backward weight, split-K partial sums, as an implicit GEMM:
//   part[s, co, col] = sum_{k in split s} dY[co, k] * FQ(X)[k, col]
// per group g, rows co in [0, Cout/groups), columns col = (ci, kh, kw) over
// Cin/groups*KH*KW, reduction k = (n, oh, ow) over N*OH*OW cut into `splits` chunks of
// `k_chunk` (workgroup z = split * groups + g). conv_wgrad_reduce.wgsl sums the splits and
// applies the STE mask of W. Flag FQ_X (p.flags bit 1) fake-quantizes X with its state. Same tiling as conv.wgsl (256 invocations, 4 x 4 register
// blocks, TPM along M, BK = 8); X is gathered with consecutive invocations on consecutive
// output pixels so its loads are coalesced.

// #include common/conv_params.wgsl
// #include common/fake_quant.wgsl

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> xq: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;

override WG: u32 = 256u;       // invocations per workgroup: 256 or 64
override TPM: u32 = 16u;
// Fully unroll the BK loop (real GPUs). Off on lavapipe, where the unrolled shader takes
// about twice as long to compile at first dispatch and runs no faster.
override UNROLL: bool = true;
// CPU adapters (lavapipe): no workgroup memory or barriers (they cost more than they save
// there); each invocation computes a 4 x 8 block of one split straight from storage (see
// `wgrad_direct`). WG is then 64 and TPM unused; splits cut N*OH output rows, k_chunk rows
// each.
override DIRECT: bool = false;

const BK: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> As: array<vec4<f32>, 136>;  // BK x (BM + 4) floats, read as vec4 (4 rows)
var<workgroup> Bs: array<vec4<f32>, 520>;  // BK x (BN + 4) floats, stored k-fastest, read as vec4
// Decode tables, so that no integer division runs per element: Cd[c] for the workgroup's
// columns (ci, kh, kw) -> (offset of the tap in X relative to the pixel's top-left input,
// kh * dil_h, kw * dil_w); Kd[slot + kk] for the step's k = (n, oh, ow) -> (offset of the
// top-left input in X, ih0, iw0, offset in dY without the channel), two slots, ping-pong.
var<workgroup> Cd: array<vec4<i32>, 256>;
var<workgroup> Kd: array<vec4<i32>, 16>;

const FAR: i32 = -1073741824;  // an input row no tap reaches: marks padding columns/steps

fn kdecode(k: u32, kend: u32, g: u32) -> vec4<i32> {
    if (k >= kend) { return vec4<i32>(0, FAR, FAR, 0); }
    let ohw = p.oh * p.ow;
    let nb = k / ohw;
    let pp = k % ohw;
    let ih0 = i32(pp / p.ow * p.stride_h) - i32(p.pad_h);
    let iw0 = i32(pp % p.ow * p.stride_w) - i32(p.pad_w);
    let xoff = i32((nb * p.c_in + g * p.cin_g) * p.h * p.w) + ih0 * i32(p.w) + iw0;
    return vec4<i32>(xoff, ih0, iw0, i32(nb * p.c_out * ohw + pp));
}

fn store_row(base: u32, row: u32, v: vec4<f32>, col0: u32, step: u32) {
    if (row >= p.gemm_m) { return; }
    for (var j = 0u; j < TN; j++) {
        let col = col0 + j * step;
        if (col < p.gemm_n) {
            part[base + row * p.gemm_n + col] = v[j];
        }
    }
}

// Decoded columns (ci, kh, kw) of one vec4 group starting at col0: the offset of the tap in
// X relative to the output pixel's top-left input in channel 0 of the group, its (h, w)
// displacement, and which exist (columns past the last read as 0).
struct Cols {
    xo: vec4<i32>,
    dh: vec4<i32>,
    dw: vec4<i32>,
    ok: vec4<bool>,
}

fn decode_cols(col0: u32) -> Cols {
    var c: Cols;
    let khw = p.kh * p.kw;
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        let cc = min(col, p.gemm_n - 1u);
        let ci = cc / khw;
        let r = cc % khw;
        let dh = r / p.kw * p.dil_h;
        let dw = r % p.kw * p.dil_w;
        c.xo[j] = i32(ci * p.h * p.w + dh * p.w + dw);
        c.dh[j] = i32(dh);
        c.dw[j] = i32(dw);
        c.ok[j] = col < p.gemm_n;
    }
    return c;
}

// X of one column group at input (ih, iw), where row_ok (the column exists and ih is inside)
// and iw is inside; else 0. Fake-quantized when x_on.
fn gather_x(base: vec4<i32>, row_ok: vec4<bool>, iw: vec4<i32>, x_on: bool, xp: vec3<f32>) -> vec4<f32> {
    let inside = row_ok & (iw >= vec4<i32>(0)) & (iw < vec4<i32>(i32(p.w)));
    let idx = select(vec4<i32>(0), base, inside);
    var v = vec4<f32>(x[u32(idx.x)], x[u32(idx.y)], x[u32(idx.z)], x[u32(idx.w)]);
    if (x_on) {
        v = fq4(v, vec4<f32>(xp.x), vec4<f32>(xp.y), vec4<f32>(xp.z), p.x_qmin, p.x_qmax);
    }
    return select(vec4<f32>(0.0), v, inside);
}

// The direct weight gradient (DIRECT): per group g (workgroup z), invocation item (linear
// over x, y and the 64 lanes; column blocks fastest, then row blocks, then splits) computes
// part[s, rows co = 8 rb .. + 7, columns 8 cb .. + 7] over the split's output rows
// (n, oh) in k_chunk-row chunks, each row's pixels ow in order: a fixed summation order, so
// the result does not depend on scheduling.
fn wgrad_direct(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) {
    let g = wid.z;
    let M = p.gemm_m;
    let N = p.gemm_n;
    let m_blocks = (M + 7u) / 8u;
    let n_blocks = (N + 7u) / 8u;
    let item = (wid.x + wid.y * nwg.x) * WG + lid;
    if (item >= m_blocks * n_blocks * p.splits) { return; }
    let col0 = item % n_blocks * 8u;
    let t = item / n_blocks;
    let row = t % m_blocks * 8u;
    let s = t / m_blocks;
    let rows = p.n * p.oh;
    let rbeg = s * p.k_chunk;
    let rend = min(rows, rbeg + p.k_chunk);

    var x_on = false;
    var xp = vec3<f32>(1.0, 1.0, 0.0);
    if ((p.flags & FQ_X) != 0u) {
        x_on = xq[0] != 0.0;
        xp = vec3<f32>(xq[4], xq[5], xq[6]);
    }
    let ca = decode_cols(col0);
    let cb = decode_cols(col0 + 4u);
    let ohw = p.oh * p.ow;
    let hw = p.h * p.w;
    // dY channel offsets of the 4 rows (clamped into range; rows past M are computed and
    // dropped).
    let d0 = (g * M + min(row + 0u, M - 1u)) * ohw;
    let d1 = (g * M + min(row + 1u, M - 1u)) * ohw;
    let d2 = (g * M + min(row + 2u, M - 1u)) * ohw;
    let d3 = (g * M + min(row + 3u, M - 1u)) * ohw;
    let d4 = (g * M + min(row + 4u, M - 1u)) * ohw;
    let d5 = (g * M + min(row + 5u, M - 1u)) * ohw;
    let d6 = (g * M + min(row + 6u, M - 1u)) * ohw;
    let d7 = (g * M + min(row + 7u, M - 1u)) * ohw;

    var a0 = vec4<f32>(0.0);
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var a4 = a0;
    var a5 = a0;
    var a6 = a0;
    var a7 = a0;
    var b0 = a0;
    var b1 = a0;
    var b2 = a0;
    var b3 = a0;
    var b4 = a0;
    var b5 = a0;
    var b6 = a0;
    var b7 = a0;
    var nb = rbeg / p.oh;
    var oh = rbeg % p.oh;
    for (var r = rbeg; r < rend; r++) {
        let ih0 = i32(oh * p.stride_h) - i32(p.pad_h);
        let xb = i32((nb * p.c_in + g * p.cin_g) * hw) + ih0 * i32(p.w) - i32(p.pad_w);
        let iha = vec4<i32>(ih0) + ca.dh;
        let ihb = vec4<i32>(ih0) + cb.dh;
        let oka = ca.ok & (iha >= vec4<i32>(0)) & (iha < vec4<i32>(i32(p.h)));
        let okb = cb.ok & (ihb >= vec4<i32>(0)) & (ihb < vec4<i32>(i32(p.h)));
        let xa0 = vec4<i32>(xb) + ca.xo;
        let xb0 = vec4<i32>(xb) + cb.xo;
        let wa0 = ca.dw - vec4<i32>(i32(p.pad_w));
        let wb0 = cb.dw - vec4<i32>(i32(p.pad_w));
        let yb = nb * p.c_out * ohw + oh * p.ow;
        for (var ow = 0u; ow < p.ow; ow++) {
            let iw = i32(ow * p.stride_w);
            let xa = gather_x(xa0 + vec4<i32>(iw), oka, wa0 + vec4<i32>(iw), x_on, xp);
            let xv = gather_x(xb0 + vec4<i32>(iw), okb, wb0 + vec4<i32>(iw), x_on, xp);
            let y = yb + ow;
            let y0 = vec4<f32>(dy[y + d0]);
            let y1 = vec4<f32>(dy[y + d1]);
            let y2 = vec4<f32>(dy[y + d2]);
            let y3 = vec4<f32>(dy[y + d3]);
            let y4 = vec4<f32>(dy[y + d4]);
            let y5 = vec4<f32>(dy[y + d5]);
            let y6 = vec4<f32>(dy[y + d6]);
            let y7 = vec4<f32>(dy[y + d7]);
            a0 = fma(y0, xa, a0);
            a1 = fma(y1, xa, a1);
            a2 = fma(y2, xa, a2);
            a3 = fma(y3, xa, a3);
            a4 = fma(y4, xa, a4);
            a5 = fma(y5, xa, a5);
            a6 = fma(y6, xa, a6);
            a7 = fma(y7, xa, a7);
            b0 = fma(y0, xv, b0);
            b1 = fma(y1, xv, b1);
            b2 = fma(y2, xv, b2);
            b3 = fma(y3, xv, b3);
            b4 = fma(y4, xv, b4);
            b5 = fma(y5, xv, b5);
            b6 = fma(y6, xv, b6);
            b7 = fma(y7, xv, b7);
        }
        oh++;
        if (oh == p.oh) {
            oh = 0u;
            nb++;
        }
    }
    let base = (s * p.c_out + g * M) * N;
    store_row(base, row + 0u, a0, col0, 1u);
    store_row(base, row + 1u, a1, col0, 1u);
    store_row(base, row + 2u, a2, col0, 1u);
    store_row(base, row + 3u, a3, col0, 1u);
    store_row(base, row + 4u, a4, col0, 1u);
    store_row(base, row + 5u, a5, col0, 1u);
    store_row(base, row + 6u, a6, col0, 1u);
    store_row(base, row + 7u, a7, col0, 1u);
    store_row(base, row + 0u, b0, col0 + 4u, 1u);
    store_row(base, row + 1u, b1, col0 + 4u, 1u);
    store_row(base, row + 2u, b2, col0 + 4u, 1u);
    store_row(base, row + 3u, b3, col0 + 4u, 1u);
    store_row(base, row + 4u, b4, col0 + 4u, 1u);
    store_row(base, row + 5u, b5, col0 + 4u, 1u);
    store_row(base, row + 6u, b6, col0 + 4u, 1u);
    store_row(base, row + 7u, b7, col0 + 4u, 1u);
}

@compute @workgroup_size(WG)
fn conv2d_wgrad_partial(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (DIRECT) {
        wgrad_direct(lid, wid, nwg);
        return;
    }
    let tpn = WG / TPM;
    // The BK loop bound: the constant BK, or an opaque equal value that stops unrolling.
    let kb = select(min(BK, p.n * BK), BK, UNROLL);
    let bm = TM * TPM;
    let bn = TN * tpn;
    let g = wid.z % p.groups;
    let s = wid.z / p.groups;
    let M = p.gemm_m;
    let N = p.gemm_n;
    // Tiles are numbered linearly over (x, y), M fastest, so that workgroups running
    // together share the same gathered columns.
    let m_tiles = (M + bm - 1u) / bm;
    let t = wid.x + wid.y * nwg.x;
    if (t >= m_tiles * ((N + bn - 1u) / bn)) { return; }
    let m0 = t % m_tiles * bm;
    let n0 = t / m_tiles * bn;
    let kbeg = s * p.k_chunk;
    let kend = min(p.gemm_k, kbeg + p.k_chunk);
    let khw = p.kh * p.kw;
    let hw = p.h * p.w;
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

    let tx = lid % tpn;
    let ty = lid / tpn;
    if (lid < bn) {
        let col = n0 + lid;
        var d = vec4<i32>(0, FAR, FAR, 0);
        if (col < N) {
            let ci = col / khw;
            let r = col % khw;
            let dh = r / p.kw * p.dil_h;
            let dw = r % p.kw * p.dil_w;
            d = vec4<i32>(i32(ci * hw + dh * p.w + dw), i32(dh), i32(dw), 0);
        }
        Cd[lid] = d;
    }
    if (lid < BK) { Kd[lid] = kdecode(kbeg + lid, kend, g); }
    workgroupBarrier();
    // B loads: this invocation's k offset is fixed, its columns step by WG / BK.
    let bkk = lid % BK;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    var slot = 0u;
    for (var k0 = kbeg; k0 < kend; k0 += BK) {
        if (lid < BK) { Kd[BK - slot + lid] = kdecode(k0 + BK + lid, kend, g); }
        // A tile: dY[n, co, oh, ow].
        for (var e = lid; e < bm * BK; e += WG) {
            let m = e / BK;
            let kk = e % BK;
            let row = m0 + m;
            var v = 0.0;
            if (row < M && k0 + kk < kend) {
                v = dy[u32(Kd[slot + kk].w) + (g * M + row) * ohw];
            }
            let ai = kk * (bm + 4u) + m;
            As[ai / 4u][ai % 4u] = v;
        }
        // B tile: FQ(X)[k, (ci, kh, kw)]; padding columns and steps past kend have rows FAR.
        let kd = Kd[slot + bkk];
        for (var c = lid / BK; c < bn; c += WG / BK) {
            let d = Cd[c];
            let ih = kd.y + d.y;
            let iw = kd.z + d.z;
            var v = 0.0;
            if (ih >= 0 && ih < i32(p.h) && iw >= 0 && iw < i32(p.w)) {
                v = x[u32(kd.x + d.x)];
                if (x_on) { v = fq(v, xs, xinv, xz, p.x_qmin, p.x_qmax); }
            }
            let bi = bkk * (bn + 4u) + c;
            Bs[bi / 4u][bi % 4u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < kb; kk++) {
            let a = As[kk * (bm + 4u) / 4u + ty];
            let b = Bs[kk * (bn + 4u) / 4u + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
        slot = BK - slot;
    }

    // part layout [splits, Cout, Cin/groups*KH*KW]: the same layout as dW per split.
    let base = (s * p.c_out + g * M) * N;
    let col0 = n0 + tx * TN;
    store_row(base, m0 + ty * TM, acc0, col0, 1u);
    store_row(base, m0 + ty * TM + 1u, acc1, col0, 1u);
    store_row(base, m0 + ty * TM + 2u, acc2, col0, 1u);
    store_row(base, m0 + ty * TM + 3u, acc3, col0, 1u);
}
