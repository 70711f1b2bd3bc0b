// Softmax cross-entropy (fused forward + backward), test-set evaluation, argmax
// predictions, and the on-GPU training metrics with their non-finite guard.
//
// Metrics buffer: array<u32, 4> (see src/kernels/loss.rs `MetricsLayout`), accumulated
// across steps and reset by the host (or `metrics_reset`):
//   [0] loss sum   (f32 bits; sum over samples of the per-sample loss)
//   [1] correct    (u32; argmax == label, ties -> first index)
//   [2] samples    (u32)
//   [3] flags      (u32 bitmask; bit 0 = a NaN/Inf was seen, bit 1 = a label >= classes)
//
// Cross-entropy is two dispatches: `ce_rows` (one workgroup per row; `ce_rows_thread`, one
// invocation per row, when C <= SMALL_C = 32 in the host wrapper) writes each row's
// loss bits and status into a scratch `rows` buffer of 2*B u32, then `ce_finalize` (one
// workgroup) sums the rows in a fixed order and adds them into the metrics, so the
// accumulated loss is deterministic. Row status bits: 0 correct, 1 non-finite logit,
// 2 label out of range.
//
// Entry points bind different buffers at the same binding numbers (each entry point uses
// bindings 1..k contiguously, as `Dispatch::new` binds them); no entry point uses two of
// the aliased declarations.

struct Params {
    rows: u32,     // B
    classes: u32,  // C
    n: u32,        // elements (nonfinite_check)
    _pad: u32,
    scale: f32,    // dlogits = (softmax - onehot) * scale, scale = loss_scale / B
    _pad1: f32,
    _pad2: vec2<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> rows: array<u32>;
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;

const WG: u32 = 64u;
const FWG: u32 = 256u;

// #include common/index.wgsl
// #include common/nonfinite.wgsl

const NONE: u32 = 0xffffffffu;
const ST_CORRECT: u32 = 1u;
const ST_NONFINITE: u32 = 2u;
const ST_BAD_LABEL: u32 = 4u;
const FLAG_NONFINITE: u32 = 1u;
const FLAG_BAD_LABEL: u32 = 2u;


// (v, i) beats (bv, bi): larger value, or equal value at a smaller index; NONE loses.
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if (i == NONE) { return false; }
    if (bi == NONE) { return true; }
    return v > bv || (v == bv && i < bi);
}

var<workgroup> sh_v: array<f32, WG>;
var<workgroup> sh_i: array<u32, WG>;
var<workgroup> sh_s: array<f32, WG>;
var<workgroup> sh_bad: array<u32, WG>;

struct RowStats {
    mx: f32,    // max logit (the argmax's value)
    arg: u32,   // first index of the max
    sum: f32,   // sum of exp(x - mx)
    bad: u32,   // 1 when a logit is NaN/Inf
}

// Max, argmax, sum of exp(x - max) and the non-finite bit of one row, reduced over the
// workgroup in one pass (online softmax: each invocation keeps its running max and a sum
// rescaled when the max grows; pairs combine as s1*exp(m1-m) + s2*exp(m2-m)). One tree
// reduction: barriers are what costs on lavapipe. Must be called in uniform control flow.
fn row_stats(row: u32, lid: u32) -> RowStats {
    let base = row * p.classes;
    var bv = 0.0;
    var bi = NONE;
    var sum = 0.0;
    var bad = 0u;
    for (var c = lid; c < p.classes; c += WG) {
        let v = logits[base + c];
        if (nonfinite(v)) { bad = 1u; }
        if (bi == NONE) {
            bv = v;
            bi = c;
            sum = 1.0;
        } else if (v > bv) {
            sum = sum * exp(bv - v) + 1.0;
            bv = v;
            bi = c;
        } else {
            sum += exp(v - bv);
        }
    }
    sh_v[lid] = bv;
    sh_i[lid] = bi;
    sh_s[lid] = sum;
    sh_bad[lid] = bad;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s && sh_i[lid + s] != NONE) {
            let v2 = sh_v[lid + s];
            let s2 = sh_s[lid + s];
            if (sh_i[lid] == NONE) {
                sh_v[lid] = v2;
                sh_i[lid] = sh_i[lid + s];
                sh_s[lid] = s2;
            } else {
                let v1 = sh_v[lid];
                let m = max(v1, v2);
                sh_s[lid] = sh_s[lid] * exp(v1 - m) + s2 * exp(v2 - m);
                if (beats(v2, sh_i[lid + s], v1, sh_i[lid])) {
                    sh_v[lid] = v2;
                    sh_i[lid] = sh_i[lid + s];
                }
            }
            sh_bad[lid] = sh_bad[lid] | sh_bad[lid + s];
        }
        workgroupBarrier();
    }
    return RowStats(sh_v[0], sh_i[0], sh_s[0], sh_bad[0]);
}

// Writes the row's loss bits to rows[row] and its status to rows[B + row]; returns the
// stats for the gradient. Loss = log(sum) - (x[label] - max).
fn row_loss(row: u32, lid: u32) -> RowStats {
    let st = row_stats(row, lid);
    if (lid == 0u) {
        let label = labels[row];
        var status = select(0u, ST_NONFINITE, st.bad != 0u);
        var loss = 0.0;
        if (label >= p.classes) {
            status |= ST_BAD_LABEL;
        } else {
            loss = log(st.sum) - (logits[row * p.classes + label] - st.mx);
            if (st.arg == label) { status |= ST_CORRECT; }
        }
        rows[row] = bitcast<u32>(loss);
        rows[p.rows + row] = status;
    }
    return st;
}

fn row_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Fused forward + backward. Bindings: 1 logits [B,C], 2 labels [B], 3 rows scratch [2B],
// 4 dlogits [B,C] = (softmax - onehot) * scale (zero for a row whose label is out of range).
@compute @workgroup_size(64)
fn ce_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) { return; }
    let st = row_loss(row, lid);
    let label = labels[row];
    let base = row * p.classes;
    let inv = 1.0 / st.sum;
    let ok = label < p.classes;
    for (var c = lid; c < p.classes; c += WG) {
        let sm = exp(logits[base + c] - st.mx) * inv;
        let d = (sm - select(0.0, 1.0, c == label)) * p.scale;
        dlogits[base + c] = select(0.0, d, ok);
    }
}

// Forward only (evaluation). Bindings: 1 logits, 2 labels, 3 rows scratch [2B].
@compute @workgroup_size(64)
fn ce_rows_eval(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) { return; }
    _ = row_loss(row, lid);
}

// Thread-per-row variants for few classes (C <= SMALL_C in the host wrapper): no shared
// memory and no barriers, which are expensive on lavapipe. Same bindings as above; the grid
// covers B invocations of 64.
fn row_stats_seq(row: u32) -> RowStats {
    let base = row * p.classes;
    var mx = logits[base];
    var arg = 0u;
    var bad = 0u;
    for (var c = 0u; c < p.classes; c++) {
        let v = logits[base + c];
        if (nonfinite(v)) { bad = 1u; }
        if (v > mx) { mx = v; arg = c; }
    }
    var sum = 0.0;
    for (var c = 0u; c < p.classes; c++) {
        sum += exp(logits[base + c] - mx);
    }
    return RowStats(mx, arg, sum, bad);
}

fn row_loss_seq(row: u32) -> RowStats {
    let st = row_stats_seq(row);
    let label = labels[row];
    var status = select(0u, ST_NONFINITE, st.bad != 0u);
    var loss = 0.0;
    if (label >= p.classes) {
        status |= ST_BAD_LABEL;
    } else {
        loss = log(st.sum) - (logits[row * p.classes + label] - st.mx);
        if (st.arg == label) { status |= ST_CORRECT; }
    }
    rows[row] = bitcast<u32>(loss);
    rows[p.rows + row] = status;
    return st;
}

@compute @workgroup_size(64)
fn ce_rows_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let st = row_loss_seq(row);
    let label = labels[row];
    let base = row * p.classes;
    let inv = 1.0 / st.sum;
    let ok = label < p.classes;
    for (var c = 0u; c < p.classes; c++) {
        let sm = exp(logits[base + c] - st.mx) * inv;
        let d = (sm - select(0.0, 1.0, c == label)) * p.scale;
        dlogits[base + c] = select(0.0, d, ok);
    }
}

@compute @workgroup_size(64)
fn ce_rows_eval_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg, WG);
    if (row >= p.rows) { return; }
    _ = row_loss_seq(row);
}

// Argmax predictions (ties -> first index). Bindings: 1 logits, 2 preds [B] (written).
@group(0) @binding(2) var<storage, read_write> preds: array<u32>;

@compute @workgroup_size(64)
fn ce_argmax_thread(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat_index(gid, nwg, WG);
    if (row >= p.rows) { return; }
    let base = row * p.classes;
    var mx = logits[base];
    var arg = 0u;
    for (var c = 1u; c < p.classes; c++) {
        let v = logits[base + c];
        if (v > mx) { mx = v; arg = c; }
    }
    preds[row] = arg;
}

@compute @workgroup_size(64)
fn ce_argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let row = row_index(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.classes;
    var bv = 0.0;
    var bi = NONE;
    for (var c = lid; c < p.classes; c += WG) {
        let v = logits[base + c];
        if (bi == NONE || v > bv) { bv = v; bi = c; }
    }
    sh_v[lid] = bv;
    sh_i[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s && beats(sh_v[lid + s], sh_i[lid + s], sh_v[lid], sh_i[lid])) {
            sh_v[lid] = sh_v[lid + s];
            sh_i[lid] = sh_i[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) { preds[row] = sh_i[0]; }
}

// Sums the rows scratch into the metrics (one workgroup). Bindings: 1 rows [2B] (read),
// 2 metrics [4] (read_write).
@group(0) @binding(1) var<storage, read> fin_rows: array<u32>;
@group(0) @binding(2) var<storage, read_write> metrics: array<u32>;

var<workgroup> fs_loss: array<f32, FWG>;
var<workgroup> fs_cnt: array<u32, FWG>;
var<workgroup> fs_st: array<u32, FWG>;

@compute @workgroup_size(256)
fn ce_finalize(@builtin(local_invocation_index) lid: u32) {
    var loss = 0.0;
    var cnt = 0u;
    var st = 0u;
    for (var r = lid; r < p.rows; r += FWG) {
        loss += bitcast<f32>(fin_rows[r]);
        let s = fin_rows[p.rows + r];
        cnt += s & ST_CORRECT;
        st |= s;
    }
    fs_loss[lid] = loss;
    fs_cnt[lid] = cnt;
    fs_st[lid] = st;
    workgroupBarrier();
    for (var s = FWG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            fs_loss[lid] += fs_loss[lid + s];
            fs_cnt[lid] += fs_cnt[lid + s];
            fs_st[lid] |= fs_st[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let total = fs_loss[0];
        var flags = metrics[3];
        if ((fs_st[0] & ST_NONFINITE) != 0u || nonfinite(total)) { flags |= FLAG_NONFINITE; }
        if ((fs_st[0] & ST_BAD_LABEL) != 0u) { flags |= FLAG_BAD_LABEL; }
        metrics[0] = bitcast<u32>(bitcast<f32>(metrics[0]) + total);
        metrics[1] += fs_cnt[0];
        metrics[2] += p.rows;
        metrics[3] = flags;
    }
}

// Zeroes words 0..n of the metrics (n = 4). Bindings: 1 metrics.
@group(0) @binding(1) var<storage, read_write> reset_metrics: array<u32>;

@compute @workgroup_size(64)
fn metrics_reset(@builtin(local_invocation_index) lid: u32) {
    if (lid < p.n) { reset_metrics[lid] = 0u; }
}

// Sets metrics flag bit 0 when any of x[0..n) is NaN/Inf. Bindings: 1 x (read),
// 2 metrics (atomic).
@group(0) @binding(2) var<storage, read_write> guard_metrics: array<atomic<u32>>;

@compute @workgroup_size(256)
fn nonfinite_check(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_index(gid, nwg, FWG);
    if (i >= p.n) { return; }
    // Load first so that an all-NaN tensor does not serialize on one atomic.
    if (nonfinite(logits[i]) && (atomicLoad(&guard_metrics[3]) & FLAG_NONFINITE) == 0u) {
        atomicOr(&guard_metrics[3], FLAG_NONFINITE);
    }
}
