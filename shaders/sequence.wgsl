// Sequence ops of vision transformers and text encoders. f32, row-major; a sequence
// activation is [B, T, D] (features fastest). Host wrappers: src/kernels/sequence.rs;
// CPU references: src/reference/sequence.rs.
//
// embedding_forward:  out[b,t,:] = table[ids[b,t], :]; an id that is not an integer in
//                     [0, V) writes zeros (token ids travel as f32 integers).
// embedding_backward: dtable[v,:] = sum over (b,t) with ids[b,t] == v of dout[b,t,:], summed
//                     in (b,t) order starting from 0.0 (deterministic, no atomics). One
//                     workgroup per vocabulary row: it finds the row's positions in chunks of
//                     CHUNK ids (per-thread segments, an ordered compaction in workgroup
//                     memory), then each thread adds its feature over that list in order.
//                     O(V * B*T) id reads and O(B*T*D) gradient reads, 4 barriers per chunk.
// patchify_forward:   x [B, C, H, W] -> out [B, T, C*P*P], token t = py*(W/P) + px,
//                     feature c*P*P + ky*P + kx (PyTorch conv weight flatten order).
// patchify_backward:  the inverse permutation (every x element is read exactly once).
// cls_pos_forward:    out[b,0,:] = cls + pos[0,:]; out[b,t+1,:] = x[b,t,:] + pos[t+1,:].
// pos_forward:        out[b,t,:] = x[b,t,:] + pos[t,:] (no CLS token).
// cls_pos_backward /  one invocation per (t', d): dx[b,t'-off,d] = dout[b,t',d] and
// pos_backward:       dpos[t',d] = sum_b dout[b,t',d] in b order (dcls = dpos[0,:] with CLS).
// token_pool_forward: [B, T, D] -> [B, D]: token 0 (MEAN false) or the mean of the tokens
//                     whose key mask is 0.0 (all tokens when MASKED is false); 0 when none.
// token_pool_backward: dx (overwritten; zeros where the forward did not read).
// key_mask_from_ids:  mask = 1.0 where ids == pad_id, else 0.0.
// Buffers may not alias.

// #include common/index.wgsl

struct Params {
    n: u32,          // invocations of a 1-D entry point
    batch: u32,      // B
    tokens: u32,     // T: tokens of ids / x / dx
    dim: u32,        // D: features (embedding, cls/pos, pool)
    vocab: u32,      // V
    channels: u32,   // patchify C
    height: u32,     // patchify H
    width: u32,      // patchify W
    psize: u32,      // patchify P
    out_tokens: u32, // T' = T + 1 with a CLS token, else T; patchify: tokens
    _pad0: u32,
    pad_id: f32,     // key_mask_from_ids (an integer below 2^24, exact in f32)
}

// Token pool: mean of the tokens (false: token 0) / only tokens whose mask is 0.0.
override MEAN: bool = false;
override MASKED: bool = false;

const WG: u32 = 256u;
const NO_ROW: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;

// The table row of a token id, or NO_ROW when it is not an integer in [0, vocab). The final
// test is on integers, so no value (NaN, Inf, negative, huge) can index past the table even
// where the compiler assumes finite math.
fn id_row(id: f32, vocab: u32) -> u32 {
    let r = u32(clamp(id, 0.0, 16777216.0));
    if (id >= 0.0 && f32(r) == id && r < vocab) {
        return r;
    }
    return NO_ROW;
}

// Bindings: 1 ids [B*T], 2 table [V, D], 3 out [B*T, D]. n = B*T*D.
@compute @workgroup_size(256)
fn embedding_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let r = id_row(in1[i / p.dim], p.vocab);
    var v = 0.0;
    if (r != NO_ROW) {
        v = in2[r * p.dim + i % p.dim];
    }
    out3[i] = v;
}

const EWG: u32 = 64u;     // threads per vocabulary row
const SEG: u32 = 16u;     // ids per thread per chunk
const CHUNK: u32 = 1024u; // EWG * SEG ids per chunk

var<workgroup> s_count: array<u32, EWG>;
var<workgroup> s_total: u32;
var<workgroup> s_list: array<u32, CHUNK>;

// Bindings: 1 ids [B*T], 2 dout [B*T, D], 3 dtable [V, D] (overwritten). One workgroup per
// row v (workgroup index wid.x + wid.y * nwg.x; extra workgroups of a 2-D grid return).
@compute @workgroup_size(64)
fn embedding_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let v = wid.x + wid.y * nwg.x;
    if (v >= p.vocab) { return; }
    let n = p.batch * p.tokens;
    for (var c0 = 0u; c0 < n; c0 += CHUNK) {
        // 1. Count this thread's matches in its segment [s, s + SEG).
        let s = c0 + lid * SEG;
        var cnt = 0u;
        for (var j = 0u; j < SEG; j++) {
            let pos = s + j;
            if (pos < n && id_row(in1[pos], p.vocab) == v) { cnt++; }
        }
        s_count[lid] = cnt;
        workgroupBarrier();
        // 2. Exclusive prefix of the counts (64 additions, one thread).
        if (lid == 0u) {
            var acc = 0u;
            for (var k = 0u; k < EWG; k++) {
                let c = s_count[k];
                s_count[k] = acc;
                acc += c;
            }
            s_total = acc;
        }
        workgroupBarrier();
        // 3. Ordered compaction: matching positions in (b,t) order.
        var o = s_count[lid];
        for (var j = 0u; j < SEG; j++) {
            let pos = s + j;
            if (pos < n && id_row(in1[pos], p.vocab) == v) {
                s_list[o] = pos;
                o++;
            }
        }
        let total = workgroupUniformLoad(&s_total);
        // 4. Sum in list order, continuing the running sum of earlier chunks (read back
        //    from dtable by the thread that wrote it), so the order is plain (b,t) order.
        for (var d = lid; d < p.dim; d += EWG) {
            let at = v * p.dim + d;
            var acc = 0.0;
            if (c0 > 0u) { acc = out3[at]; }
            for (var k = 0u; k < total; k++) {
                acc += in2[s_list[k] * p.dim + d];
            }
            out3[at] = acc;
        }
        workgroupBarrier();
    }
}

// Bindings: 1 x [B, C, H, W], 2 out [B, T, C*P*P]. n = B*T*C*P*P.
@compute @workgroup_size(256)
fn patchify_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let pp = p.psize * p.psize;
    let feats = p.channels * pp;
    let f = i % feats;
    let bt = i / feats;
    let t = bt % p.out_tokens;
    let b = bt / p.out_tokens;
    let c = f / pp;
    let ky = (f % pp) / p.psize;
    let kx = f % p.psize;
    let gw = p.width / p.psize;
    let y = (t / gw) * p.psize + ky;
    let x = (t % gw) * p.psize + kx;
    out2[i] = in1[((b * p.channels + c) * p.height + y) * p.width + x];
}

// Bindings: 1 dout [B, T, C*P*P], 2 dx [B, C, H, W]. n = B*C*H*W.
@compute @workgroup_size(256)
fn patchify_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let x = i % p.width;
    let y = (i / p.width) % p.height;
    let bc = i / (p.width * p.height);
    let c = bc % p.channels;
    let b = bc / p.channels;
    let gw = p.width / p.psize;
    let t = (y / p.psize) * gw + x / p.psize;
    let f = (c * p.psize + y % p.psize) * p.psize + x % p.psize;
    out2[i] = in1[(b * p.out_tokens + t) * p.channels * p.psize * p.psize + f];
}

// Bindings: 1 x [B, T, D], 2 cls [D], 3 pos [T+1, D], 4 out [B, T+1, D]. n = B*(T+1)*D.
@compute @workgroup_size(256)
fn cls_pos_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let d = i % p.dim;
    let tt = (i / p.dim) % p.out_tokens;
    let b = i / (p.dim * p.out_tokens);
    var v: f32;
    if (tt == 0u) {
        v = in2[d];
    } else {
        v = in1[(b * p.tokens + tt - 1u) * p.dim + d];
    }
    out4[i] = v + in3[tt * p.dim + d];
}

// Bindings: 1 x [B, T, D], 2 pos [T, D], 3 out [B, T, D]. n = B*T*D.
@compute @workgroup_size(256)
fn pos_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    out3[i] = in1[i] + in2[i % (p.tokens * p.dim)];
}

// dx[b, t'-off, d] = dout[b, t', d] for t' >= off; returns sum_b dout[b, t', d] (b order).
// Reads binding 1 (dout [B, T', D]), writes binding 2 (dx [B, T, D]); j = t'*D + d.
fn pos_grad(j: u32, off: u32) -> f32 {
    let tt = j / p.dim;
    let d = j % p.dim;
    var acc = 0.0;
    for (var b = 0u; b < p.batch; b++) {
        let g = in1[(b * p.out_tokens + tt) * p.dim + d];
        acc += g;
        if (tt >= off) {
            out2[(b * p.tokens + tt - off) * p.dim + d] = g;
        }
    }
    return acc;
}

// Bindings: 1 dout [B, T+1, D], 2 dx [B, T, D], 3 dpos [T+1, D], 4 dcls [D]. n = (T+1)*D.
@compute @workgroup_size(256)
fn cls_pos_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_index(gid, nwg, WG);
    if (j >= p.n) { return; }
    let acc = pos_grad(j, 1u);
    out3[j] = acc;
    if (j < p.dim) { out4[j] = acc; }
}

// Bindings: 1 dout [B, T, D], 2 dx [B, T, D], 3 dpos [T, D]. n = T*D.
@compute @workgroup_size(256)
fn pos_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let j = flat_index(gid, nwg, WG);
    if (j >= p.n) { return; }
    out3[j] = pos_grad(j, 0u);
}

// Bindings: 1 x [B, T, D], 2 key mask [B, T] (x again when not MASKED), 3 out [B, D]. n = B*D.
@compute @workgroup_size(256)
fn token_pool_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let d = i % p.dim;
    let b = i / p.dim;
    let base = b * p.tokens * p.dim + d;
    if (!MEAN) {
        out3[i] = in1[base];
        return;
    }
    var acc = 0.0;
    var cnt = 0u;
    for (var t = 0u; t < p.tokens; t++) {
        if (!MASKED || in2[b * p.tokens + t] == 0.0) {
            acc += in1[base + t * p.dim];
            cnt++;
        }
    }
    var v = 0.0;
    if (cnt > 0u) { v = acc / f32(cnt); }
    out3[i] = v;
}

// Bindings: 1 dout [B, D], 2 key mask [B, T] (dout again when not MASKED), 3 dx [B, T, D].
// n = B*D; each invocation writes its feature of every token of its sample.
@compute @workgroup_size(256)
fn token_pool_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    let d = i % p.dim;
    let b = i / p.dim;
    let base = b * p.tokens * p.dim + d;
    if (!MEAN) {
        out3[base] = in1[i];
        for (var t = 1u; t < p.tokens; t++) { out3[base + t * p.dim] = 0.0; }
        return;
    }
    var cnt = p.tokens;
    if (MASKED) {
        cnt = 0u;
        for (var t = 0u; t < p.tokens; t++) {
            if (in2[b * p.tokens + t] == 0.0) { cnt++; }
        }
    }
    var g = 0.0;
    if (cnt > 0u) { g = in1[i] / f32(cnt); }
    for (var t = 0u; t < p.tokens; t++) {
        var v = g;
        if (MASKED && in2[b * p.tokens + t] != 0.0) { v = 0.0; }
        out3[base + t * p.dim] = v;
    }
}

// Bindings: 1 ids [B*T], 2 mask [B*T]. n = B*T.
@compute @workgroup_size(256)
fn key_mask_from_ids(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, WG);
    if (i >= p.n) { return; }
    out2[i] = select(0.0, 1.0, in1[i] == p.pad_id);
}
