// Conv2d backward data as an implicit GEMM: dX = conv_transpose(dY, FQ(W)) * STE(x).
//
// Per group g (workgroup z): dX[ci, col] = sum_k FQ(W)[k, ci] * dY[k, col] with rows ci in
// [0, Cin/groups), columns col = (n, ih, iw) over N*H*W and k = (co, kh, kw) over
// Cout/groups*KH*KW. dY is gathered: oh = (ih + pad - kh*dil) / stride when that divides
// and lies in range, else 0. Same tiling as conv.wgsl (256 invocations, 4 x 4 register
// blocks, TPM along M, BK = 8).
// Flags (p.flags bits, uniform branches rather than override constants so that one pipeline
// per tile shape serves every combination): FQ_W fake-quantizes W with its state; MASK
// multiplies by STE(x) = [qmin <= round(x * inv_s) + z <= qmax] with x's per-tensor state
// (pass-through when its fq_on is 0); ACCUM makes it dX += result instead of dX = result.

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
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> wt: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read> xq: array<f32>;
@group(0) @binding(6) var<storage, read_write> dx: array<f32>;

override TPM: u32 = 16u;

// Bits of p.flags.
const FQ_W: u32 = 2u;
const MASK: u32 = 16u;
const ACCUM: u32 = 32u;
const WG: u32 = 256u;
const BK: u32 = 8u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> As: array<f32, 512>;
var<workgroup> Bs: array<f32, 2048>;

fn fq(v: f32, s: f32, inv_s: f32, z: f32, qmin: f32, qmax: f32) -> f32 {
    return (clamp(round(v * inv_s) + z, qmin, qmax) - z) * s;
}

fn store_row(g: u32, row: u32, v: vec4<f32>, col0: u32, tpn: u32) {
    if (row >= p.gemm_m) { return; }
    let ci = g * p.gemm_m + row;
    let hw = p.h * p.w;
    var m_on = false;
    var xinv = 1.0;
    var xz = 0.0;
    if ((p.flags & MASK) != 0u) {
        m_on = xq[0] != 0.0;
        xinv = xq[5];
        xz = xq[6];
    }
    for (var j = 0u; j < TN; j++) {
        let col = col0 + j * tpn;
        if (col < p.gemm_n) {
            let idx = (col / hw * p.c_in + ci) * hw + col % hw;
            var o = v[j];
            if (m_on) {
                let r = round(x[idx] * xinv) + xz;
                o = select(0.0, o, r >= p.x_qmin && r <= p.x_qmax);
            }
            if ((p.flags & ACCUM) != 0u) { o += dx[idx]; }
            dx[idx] = o;
        }
    }
}

@compute @workgroup_size(256)
fn conv2d_backward_data(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tpn = WG / TPM;
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
    let khw = p.kh * p.kw;
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    var w_on = false;
    if ((p.flags & FQ_W) != 0u) { w_on = wq[0] != 0.0; }

    // The input pixel this invocation gathers dY for, decoded once.
    let lc = lid % bn;
    let col = n0 + lc;
    let col_ok = col < N;
    let nb = col / hw;
    let pix = col % hw;
    let th0 = i32(pix / p.w + p.pad_h);
    let tw0 = i32(pix % p.w + p.pad_w);
    let dybase = (nb * p.c_out + g * p.cout_g) * ohw;
    let sh = i32(p.stride_h);
    let sw = i32(p.stride_w);

    let tx = lid % tpn;
    let ty = lid / tpn;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < K; k0 += BK) {
        // A tile: A[ci, k] = FQ(W)[co, ci, kh, kw], k = (co, kh, kw).
        for (var e = lid; e < bm * BK; e += WG) {
            let m = e / BK;
            let kk = e % BK;
            let row = m0 + m;
            let k = k0 + kk;
            var v = 0.0;
            if (row < M && k < K) {
                let co = g * p.cout_g + k / khw;
                v = wt[(co * p.cin_g + row) * khw + k % khw];
                if (w_on) {
                    v = fq(v, wq[4u + co], wq[4u + p.c_out + co], wq[4u + 2u * p.c_out + co], p.w_qmin, p.w_qmax);
                }
            }
            As[kk * bm + m] = v;
        }
        // B tile: dY gathered through the transposed geometry.
        for (var kk = lid / bn; kk < BK; kk += WG / bn) {
            let k = k0 + kk;
            var v = 0.0;
            if (col_ok && k < K) {
                let co = k / khw;
                let r = k % khw;
                let th = th0 - i32(r / p.kw * p.dil_h);
                let tw = tw0 - i32(r % p.kw * p.dil_w);
                if (th >= 0 && tw >= 0 && th % sh == 0 && tw % sw == 0) {
                    let oh = u32(th / sh);
                    let ow = u32(tw / sw);
                    if (oh < p.oh && ow < p.ow) {
                        v = dy[dybase + co * ohw + oh * p.ow + ow];
                    }
                }
            }
            Bs[kk * bn + lc] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let ab = kk * bm + ty;
            let a = vec4<f32>(As[ab], As[ab + TPM], As[ab + 2u * TPM], As[ab + 3u * TPM]);
            let bb = kk * bn + tx;
            let b = vec4<f32>(Bs[bb], Bs[bb + tpn], Bs[bb + 2u * tpn], Bs[bb + 3u * tpn]);
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }

    let col0 = n0 + tx;
    store_row(g, m0 + ty, acc0, col0, tpn);
    store_row(g, m0 + ty + TPM, acc1, col0, tpn);
    store_row(g, m0 + ty + 2u * TPM, acc2, col0, tpn);
    store_row(g, m0 + ty + 3u * TPM, acc3, col0, tpn);
}
