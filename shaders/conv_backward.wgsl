// Conv2d backward data as an implicit GEMM: dX = conv_transpose(dY, FQ(W)) * STE(x).
//
// Stride phases: input rows with (ih + pad_h) % stride_h == rh only receive from taps kh with
// (kh * dil_h) % stride_h == rh, an arithmetic progression kh_first + j * step_h; likewise
// for columns. So each (group g, phase (rh, rw)) is its own GEMM (workgroup z = g * phases +
// phase) and no work is spent on taps that fall between output pixels:
//   dX[ci, col] = sum_k FQ(W)[k, ci] * dY[k, col]
// rows ci in [0, Cin/groups), columns col = (n, jh, jw) over the phase's input pixels
// ih = ih_first + jh * stride_h, and k = (co, jh_tap, jw_tap) over Cout/groups x the
// phase's valid taps; oh = oh0(col) - jh_tap * delta_h with delta_h = step_h * dil_h /
// stride_h. Same tiling as conv.wgsl (WG = 256 or 64 invocations, 4 x 4 register blocks, TPM
// along M, BK = 8).
// Flags (p.flags bits, uniform branches rather than override constants so that one pipeline
// per tile shape serves every combination): FQ_W fake-quantizes W with its state; MASK
// multiplies by STE(x) = [qmin <= round(x * inv_s) + z <= qmax] with x's per-tensor state
// (pass-through when its fq_on is 0); ACCUM makes it dX += result instead of dX = result.

// #include common/conv_params.wgsl
// #include common/fake_quant.wgsl

@group(0) @binding(0) var<uniform> p: ConvParams;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> xq: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;

override WG: u32 = 256u;       // invocations per workgroup: 256 or 64
override TPM: u32 = 16u;
// Fully unroll the BK loop (real GPUs). Off on lavapipe, where the unrolled shader takes
// about twice as long to compile at first dispatch and runs no faster.
override UNROLL: bool = true;
// CPU adapters (lavapipe): no workgroup memory or barriers (they cost more than they save
// there); each invocation computes 4 rows x 8 columns of one phase straight from storage
// (see `backward_direct`). WG is then 64 and TPM unused.
override DIRECT: bool = false;

const BK: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> As: array<vec4<f32>, 136>;  // BK x (BM + 4) floats, read as vec4 (4 rows)
var<workgroup> Bs: array<vec4<f32>, 512>;  // BK x BN floats, read as vec4 (4 columns)
// k = (co, tap) decoded once per step (two slots, ping-pong): (co, oh displacement, ow
// displacement, kh * KW + kw).
var<workgroup> Kd: array<vec4<i32>, 16>;

// One stride phase along one axis: first input index, pixel count, first valid tap, tap
// step and count, and the output displacement per tap step.
struct Axis {
    first: u32,
    count: u32,
    k_first: u32,
    k_step: u32,
    k_count: u32,
    delta: u32,
}

fn axis(r: u32, size: u32, pad: u32, stride: u32, dil: u32, k: u32) -> Axis {
    var a: Axis;
    a.first = (r + stride - pad % stride) % stride;
    a.count = 0u;
    if (a.first < size) { a.count = (size - a.first + stride - 1u) / stride; }
    a.k_step = stride;
    for (var j = 1u; j < stride; j++) {
        if ((j * dil) % stride == 0u) { a.k_step = j; break; }
    }
    a.k_first = k;
    for (var t = 0u; t < min(k, a.k_step); t++) {
        if ((t * dil) % stride == r) { a.k_first = t; break; }
    }
    a.k_count = 0u;
    if (a.k_first < k) { a.k_count = (k - a.k_first + a.k_step - 1u) / a.k_step; }
    a.delta = a.k_step * dil / stride;
    return a;
}

fn kdecode(k: u32, ah: Axis, aw: Axis) -> vec4<i32> {
    let taps = ah.k_count * aw.k_count;
    let co = k / taps;
    let r = k % taps;
    let jh = r / aw.k_count;
    let jw = r % aw.k_count;
    let kh = ah.k_first + jh * ah.k_step;
    let kw = aw.k_first + jw * aw.k_step;
    return vec4<i32>(i32(co), i32(jh * ah.delta), i32(jw * aw.delta), i32(kh * p.kw + kw));
}

// (s, inv_s, z) of output channel co of the weight quantizer (channel 0 of a per-tensor one).
fn wparams(co: u32) -> vec3<f32> {
    var c = co;
    var n = p.c_out;
    if ((p.flags & W_PER_TENSOR) != 0u) { c = 0u; n = 1u; }
    return vec3<f32>(wq[4u + c], wq[4u + n + c], wq[4u + 2u * n + c]);
}

// Index into dX of phase column col.
fn dx_index(ci: u32, col: u32, ah: Axis, aw: Axis) -> u32 {
    let per = ah.count * aw.count;
    let q = col % per;
    let ih = ah.first + q / aw.count * p.stride_h;
    let iw = aw.first + q % aw.count * p.stride_w;
    return ((col / per * p.c_in + ci) * p.h + ih) * p.w + iw;
}

fn store_row(g: u32, row: u32, v: vec4<f32>, col0: u32, step: u32, n_cols: u32, ah: Axis, aw: Axis) {
    if (row >= p.gemm_m) { return; }
    let ci = g * p.gemm_m + row;
    var m_on = false;
    var xinv = 1.0;
    var xz = 0.0;
    if ((p.flags & MASK) != 0u) {
        m_on = xq[0] != 0.0;
        xinv = xq[5];
        xz = xq[6];
    }
    for (var j = 0u; j < TN; j++) {
        let col = col0 + j * step;
        if (col < n_cols) {
            let idx = dx_index(ci, col, ah, aw);
            var o = v[j];
            if (m_on) {
                o = select(0.0, o, fq_keeps(x[idx], xinv, xz, p.x_qmin, p.x_qmax));
            }
            if ((p.flags & ACCUM) != 0u) { o += dx[idx]; }
            dx[idx] = o;
        }
    }
}

// dY of one group of 4 phase columns at output (oh, ow) (vec4 lanes) of channel offset co_off,
// 0 outside dY or past the last column.
fn gather_dy(b: vec4<i32>, oh: vec4<i32>, ow: vec4<i32>, ok: vec4<bool>) -> vec4<f32> {
    let inside = ok & (oh >= vec4<i32>(0)) & (oh < vec4<i32>(i32(p.oh))) & (ow >= vec4<i32>(0)) & (ow < vec4<i32>(i32(p.ow)));
    let idx = select(vec4<i32>(0), b + oh * i32(p.ow) + ow, inside);
    let v = vec4<f32>(dy[u32(idx.x)], dy[u32(idx.y)], dy[u32(idx.z)], dy[u32(idx.w)]);
    return select(vec4<f32>(0.0), v, inside);
}

// Decoded phase columns of one vec4 group starting at col0: the dY offset of each column's
// image and group, the output row and column its first valid tap reads, and which exist.
struct Cols {
    b: vec4<i32>,
    oh0: vec4<i32>,
    ow0: vec4<i32>,
    ok: vec4<bool>,
}

fn decode_cols(col0: u32, n_cols: u32, g: u32, ah: Axis, aw: Axis) -> Cols {
    var c: Cols;
    let per = max(ah.count * aw.count, 1u);
    let awc = max(aw.count, 1u);
    let ohw = p.oh * p.ow;
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        let cc = min(col, max(n_cols, 1u) - 1u);
        let nb = cc / per;
        let q = cc % per;
        let ih = ah.first + q / awc * p.stride_h;
        let iw = aw.first + q % awc * p.stride_w;
        c.b[j] = i32((nb * p.c_out + g * p.cout_g) * ohw);
        c.oh0[j] = (i32(ih + p.pad_h) - i32(ah.k_first * p.dil_h)) / i32(p.stride_h);
        c.ow0[j] = (i32(iw + p.pad_w) - i32(aw.k_first * p.dil_w)) / i32(p.stride_w);
        c.ok[j] = col < n_cols;
    }
    return c;
}

fn wfq(v: vec4<f32>, q: vec3<f32>) -> vec4<f32> {
    return fq4(v, vec4<f32>(q.x), vec4<f32>(q.y), vec4<f32>(q.z), p.w_qmin, p.w_qmax);
}

// The direct backward data (DIRECT): per (group, phase) (workgroup z), invocation item
// (linear over x, y and the 64 lanes; column blocks fastest, so neighbouring invocations take
// neighbouring pixels and share the weight rows) computes rows ci = 4 rb .. + 3 and phase
// columns 8 cb .. + 7, looping over k = (co, jh, jw) in nested loops (no integer division
// per step). W's quantizer parameters are read once per co; the 4 weights of a tap are read
// as one vec4 (rows) and fake-quantized together.
fn backward_direct(lid: u32, wid: vec3<u32>, nwg: vec3<u32>) {
    let phases = p.stride_h * p.stride_w;
    let g = wid.z / phases;
    let phase = wid.z % phases;
    let ah = axis(phase / p.stride_w, p.h, p.pad_h, p.stride_h, p.dil_h, p.kh);
    let aw = axis(phase % p.stride_w, p.w, p.pad_w, p.stride_w, p.dil_w, p.kw);
    let M = p.gemm_m;
    let N = p.n * ah.count * aw.count;
    let m_blocks = (M + 3u) / 4u;
    let n_blocks = (N + 7u) / 8u;
    let item = (wid.x + wid.y * nwg.x) * WG + lid;
    if (item >= m_blocks * n_blocks) { return; }
    let row = item / n_blocks * 4u;
    let col0 = item % n_blocks * 8u;
    let khw = p.kh * p.kw;
    let ohw = i32(p.oh * p.ow);
    var w_on = false;
    if ((p.flags & FQ_W) != 0u) { w_on = wq[0] != 0.0; }

    let ca = decode_cols(col0, N, g, ah, aw);
    let cb = decode_cols(col0 + 4u, N, g, ah, aw);
    // Weight offsets of the 4 rows (clamped into range; rows past M are computed and dropped).
    let r0 = min(row, M - 1u) * khw;
    let r1 = min(row + 1u, M - 1u) * khw;
    let r2 = min(row + 2u, M - 1u) * khw;
    let r3 = min(row + 3u, M - 1u) * khw;

    var a0 = vec4<f32>(0.0);
    var a1 = a0;
    var a2 = a0;
    var a3 = a0;
    var b0 = a0;
    var b1 = a0;
    var b2 = a0;
    var b3 = a0;
    for (var c = 0u; c < p.cout_g; c++) {
        let co = g * p.cout_g + c;
        var q = vec3<f32>(1.0, 1.0, 0.0);
        if (w_on) { q = wparams(co); }
        let wb = co * p.cin_g * khw;
        let yo = vec4<i32>(i32(c) * ohw);
        let ba = ca.b + yo;
        let bb = cb.b + yo;
        for (var jh = 0u; jh < ah.k_count; jh++) {
            let kh = ah.k_first + jh * ah.k_step;
            let oha = ca.oh0 - vec4<i32>(i32(jh * ah.delta));
            let ohb = cb.oh0 - vec4<i32>(i32(jh * ah.delta));
            for (var jw = 0u; jw < aw.k_count; jw++) {
                let kk = wb + kh * p.kw + aw.k_first + jw * aw.k_step;
                let dd = vec4<i32>(i32(jw * aw.delta));
                let ya = gather_dy(ba, oha, ca.ow0 - dd, ca.ok);
                let yb = gather_dy(bb, ohb, cb.ow0 - dd, cb.ok);
                var wv = vec4<f32>(wt[kk + r0], wt[kk + r1], wt[kk + r2], wt[kk + r3]);
                if (w_on) { wv = wfq(wv, q); }
                a0 = fma(vec4<f32>(wv.x), ya, a0);
                a1 = fma(vec4<f32>(wv.y), ya, a1);
                a2 = fma(vec4<f32>(wv.z), ya, a2);
                a3 = fma(vec4<f32>(wv.w), ya, a3);
                b0 = fma(vec4<f32>(wv.x), yb, b0);
                b1 = fma(vec4<f32>(wv.y), yb, b1);
                b2 = fma(vec4<f32>(wv.z), yb, b2);
                b3 = fma(vec4<f32>(wv.w), yb, b3);
            }
        }
    }
    store_row(g, row, a0, col0, 1u, N, ah, aw);
    store_row(g, row + 1u, a1, col0, 1u, N, ah, aw);
    store_row(g, row + 2u, a2, col0, 1u, N, ah, aw);
    store_row(g, row + 3u, a3, col0, 1u, N, ah, aw);
    store_row(g, row, b0, col0 + 4u, 1u, N, ah, aw);
    store_row(g, row + 1u, b1, col0 + 4u, 1u, N, ah, aw);
    store_row(g, row + 2u, b2, col0 + 4u, 1u, N, ah, aw);
    store_row(g, row + 3u, b3, col0 + 4u, 1u, N, ah, aw);
}

@compute @workgroup_size(WG)
fn conv2d_backward_data(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    if (DIRECT) {
        backward_direct(lid, wid, nwg);
        return;
    }
    let tpn = WG / TPM;
    // The BK loop bound: the constant BK, or an opaque equal value that stops unrolling.
    let kb = select(min(BK, p.n * BK), BK, UNROLL);
    let bm = TM * TPM;
    let bn = TN * tpn;
    let phases = p.stride_h * p.stride_w;
    let g = wid.z / phases;
    let phase = wid.z % phases;
    let ah = axis(phase / p.stride_w, p.h, p.pad_h, p.stride_h, p.dil_h, p.kh);
    let aw = axis(phase % p.stride_w, p.w, p.pad_w, p.stride_w, p.dil_w, p.kw);
    let M = p.gemm_m;
    let N = p.n * ah.count * aw.count;
    let K = p.cout_g * ah.k_count * aw.k_count;
    // Tiles are numbered linearly over (x, y), M fastest, so that workgroups running
    // together share the same gathered columns.
    let m_tiles = (M + bm - 1u) / bm;
    let t = wid.x + wid.y * nwg.x;
    if (t >= m_tiles * ((N + bn - 1u) / bn)) { return; }
    let m0 = t % m_tiles * bm;
    let n0 = t / m_tiles * bn;
    let khw = p.kh * p.kw;
    let ohw = p.oh * p.ow;
    var w_on = false;
    if ((p.flags & FQ_W) != 0u) { w_on = wq[0] != 0.0; }

    // The input pixel this invocation gathers dY for, decoded once: oh0 is the output row
    // its first valid tap reads.
    let lc = lid % bn;
    let col = n0 + lc;
    let col_ok = col < N;
    let per = max(ah.count * aw.count, 1u);
    let nb = col / per;
    let q = col % per;
    let ih = ah.first + q / max(aw.count, 1u) * p.stride_h;
    let iw = aw.first + q % max(aw.count, 1u) * p.stride_w;
    let oh0 = (i32(ih + p.pad_h) - i32(ah.k_first * p.dil_h)) / i32(p.stride_h);
    let ow0 = (i32(iw + p.pad_w) - i32(aw.k_first * p.dil_w)) / i32(p.stride_w);
    let dyb = i32((nb * p.c_out + g * p.cout_g) * ohw) + oh0 * i32(p.ow) + ow0;

    let tx = lid % tpn;
    let ty = lid / tpn;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    if (lid < BK) { Kd[lid] = kdecode(lid, ah, aw); }
    workgroupBarrier();
    var slot = 0u;
    for (var k0 = 0u; k0 < K; k0 += BK) {
        if (lid < BK) { Kd[BK - slot + lid] = kdecode(k0 + BK + lid, ah, aw); }
        // A tile: A[ci, k] = FQ(W)[co, ci, kh, kw].
        for (var e = lid; e < bm * BK; e += WG) {
            let m = e / BK;
            let kk = e % BK;
            let row = m0 + m;
            var v = 0.0;
            if (row < M && k0 + kk < K) {
                let d = Kd[slot + kk];
                let co = g * p.cout_g + u32(d.x);
                v = wt[(co * p.cin_g + row) * khw + u32(d.w)];
                if (w_on) {
                    let q = wparams(co);
                    v = fq(v, q.x, q.y, q.z, p.w_qmin, p.w_qmax);
                }
            }
            let ai = kk * (bm + 4u) + m;
            As[ai / 4u][ai % 4u] = v;
        }
        // B tile: dY[oh0 - tap displacement, ow0 - ...] where it lies inside dY.
        for (var kk = lid / bn; kk < BK; kk += WG / bn) {
            let d = Kd[slot + kk];
            let oh = oh0 - d.y;
            let ow = ow0 - d.z;
            var v = 0.0;
            if (col_ok && k0 + kk < K && oh >= 0 && oh < i32(p.oh) && ow >= 0 && ow < i32(p.ow)) {
                v = dy[u32(dyb + d.x * i32(ohw) - d.y * i32(p.ow) - d.z)];
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
    store_row(g, m0 + ty * TM, acc0, col0, 1u, N, ah, aw);
    store_row(g, m0 + ty * TM + 1u, acc1, col0, 1u, N, ah, aw);
    store_row(g, m0 + ty * TM + 2u, acc2, col0, 1u, N, ah, aw);
    store_row(g, m0 + ty * TM + 3u, acc3, col0, 1u, N, ah, aw);
}
