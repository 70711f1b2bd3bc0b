// Min/max observers and the qparams kernel, with no host round trip.
//
// Two-stage reduction: `minmax_partial` reduces chunks of each channel into a scratch buffer
// of (min, max) pairs, `minmax_final` reduces a channel's chunks and folds the result into
// the quantizer state (running min/max or moving average, honouring obs_on), and `qparams`
// turns the state's min/max into scale, inv_scale and zero point.
// Quantizer state layout (see src/quant.rs): [fq_on, obs_on, initialized, _,
// scale[C], inv_scale[C], zero_point[C], min[C], max[C]].
// Element j (0..per_channel) of channel c is x[((j / inner) * channels + c) * inner + j % inner].

struct Params {
    channels: u32,
    inner: u32,
    per_channel: u32,  // elements per channel (n / channels)
    chunks: u32,       // partial chunks per channel
    chunk_len: u32,    // elements per chunk
    mode: u32,         // 0 = running min/max, 1 = moving average
    symmetric: u32,
    signed_codes: u32,
    ema_c: f32,
    qmin: f32,
    qmax: f32,
    inv_den: f32,      // 1/qmax (symmetric signed) or 1/(qmax - qmin), from the host
}

@group(0) @binding(0) var<uniform> p: Params;
// minmax_partial: a = x, b = partials. minmax_final: a = partials, b = state. qparams: a = state.
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;

const WG: u32 = 256u;
var<workgroup> smin: array<f32, 256>;
var<workgroup> smax: array<f32, 256>;

fn reduce_shared(lid: u32) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            smin[lid] = min(smin[lid], smin[lid + s]);
            smax[lid] = max(smax[lid], smax[lid + s]);
        }
        workgroupBarrier();
    }
}

// One workgroup per (channel, chunk); writes b[2*(c*chunks+k)] = min, b[..+1] = max.
@compute @workgroup_size(256)
fn minmax_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let wid = wg.x + wg.y * nwg.x;
    let total = p.channels * p.chunks;
    let live = wid < total;
    let c = wid / max(p.chunks, 1u);
    let k = wid % max(p.chunks, 1u);
    var lo = bitcast<f32>(0x7f800000u);
    var hi = -lo;
    if (live) {
        let start = k * p.chunk_len;
        let end = min(start + p.chunk_len, p.per_channel);
        if (p.inner == p.per_channel) {
            // Channel-major (per tensor, or per channel along the leading axis): channel c is
            // one contiguous run, no index division per element.
            for (var j = start + lid; j < end; j = j + WG) {
                let v = a[c * p.inner + j];
                lo = min(lo, v);
                hi = max(hi, v);
            }
        } else {
            for (var j = start + lid; j < end; j = j + WG) {
                let v = a[((j / p.inner) * p.channels + c) * p.inner + j % p.inner];
                lo = min(lo, v);
                hi = max(hi, v);
            }
        }
    }
    smin[lid] = lo;
    smax[lid] = hi;
    workgroupBarrier();
    reduce_shared(lid);
    if (live && lid == 0u) {
        b[2u * wid] = smin[0];
        b[2u * wid + 1u] = smax[0];
    }
}

// One workgroup per channel: reduce its chunks, then update min/max in the state.
@compute @workgroup_size(256)
fn minmax_final(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = wg.x + wg.y * nwg.x;
    let live = c < p.channels;
    var lo = bitcast<f32>(0x7f800000u);
    var hi = -lo;
    if (live) {
        for (var k = lid; k < p.chunks; k = k + WG) {
            let o = 2u * (c * p.chunks + k);
            lo = min(lo, a[o]);
            hi = max(hi, a[o + 1u]);
        }
    }
    smin[lid] = lo;
    smax[lid] = hi;
    workgroupBarrier();
    reduce_shared(lid);
    if (!live || lid != 0u || b[1] == 0.0) { return; }
    let imin = 4u + 3u * p.channels + c;
    let imax = 4u + 4u * p.channels + c;
    let nmin = smin[0];
    let nmax = smax[0];
    if (b[2] == 0.0) {
        b[imin] = nmin;
        b[imax] = nmax;
    } else if (p.mode == 0u) {
        b[imin] = min(b[imin], nmin);
        b[imax] = max(b[imax], nmax);
    } else {
        let omin = b[imin];
        let omax = b[imax];
        b[imin] = omin + p.ema_c * (nmin - omin);
        b[imax] = omax + p.ema_c * (nmax - omax);
    }
}

// One invocation per channel: scale, inv_scale, zero point from min/max (see
// QuantSpec::qparams). Skipped when the observer is frozen; sets `initialized`.
@compute @workgroup_size(64)
fn qparams(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.channels || a[1] == 0.0) { return; }
    let C = p.channels;
    let mn = min(a[4u + 3u * C + c], 0.0);
    let mx = max(a[4u + 4u * C + c], 0.0);
    var s: f32;
    var z: f32;
    if (p.symmetric != 0u) {
        s = max(mx, -mn) * p.inv_den;
        if (!(s > 1.17549435e-38)) { s = 1.0; }
        z = select(p.qmin, 0.0, p.signed_codes != 0u);
    } else {
        s = (mx - mn) * p.inv_den;
        if (!(s > 1.17549435e-38)) { s = 1.0; }
        z = clamp(p.qmin - round(mn / s), p.qmin, p.qmax);
    }
    a[4u + c] = s;
    a[4u + C + c] = 1.0 / s;
    a[4u + 2u * C + c] = z;
    if (c == 0u) { a[2] = 1.0; }
}

// minmax_final then qparams in one single-workgroup pass: invocations stride over the
// channels, each reduces its channel's chunks, folds them into the state (as minmax_final)
// and writes the channel's qparams (as qparams). Every invocation reads `initialized` before
// a barrier, and it is set after it. a = partials, b = state.
@compute @workgroup_size(256)
fn minmax_final_qparams(@builtin(local_invocation_index) lid: u32) {
    let on = b[1] != 0.0;
    let init = b[2] != 0.0;
    storageBarrier();
    if (on) {
        let C = p.channels;
        for (var c = lid; c < C; c += WG) {
            var lo = bitcast<f32>(0x7f800000u);
            var hi = -lo;
            for (var k = 0u; k < p.chunks; k++) {
                let o = 2u * (c * p.chunks + k);
                lo = min(lo, a[o]);
                hi = max(hi, a[o + 1u]);
            }
            let imin = 4u + 3u * C + c;
            let imax = 4u + 4u * C + c;
            var nmin = lo;
            var nmax = hi;
            if (init) {
                let omin = b[imin];
                let omax = b[imax];
                if (p.mode == 0u) {
                    nmin = min(omin, lo);
                    nmax = max(omax, hi);
                } else {
                    nmin = omin + p.ema_c * (lo - omin);
                    nmax = omax + p.ema_c * (hi - omax);
                }
            }
            b[imin] = nmin;
            b[imax] = nmax;
            let mn = min(nmin, 0.0);
            let mx = max(nmax, 0.0);
            var s: f32;
            var z: f32;
            if (p.symmetric != 0u) {
                s = max(mx, -mn) * p.inv_den;
                if (!(s > 1.17549435e-38)) { s = 1.0; }
                z = select(p.qmin, 0.0, p.signed_codes != 0u);
            } else {
                s = (mx - mn) * p.inv_den;
                if (!(s > 1.17549435e-38)) { s = 1.0; }
                z = clamp(p.qmin - round(mn / s), p.qmin, p.qmax);
            }
            b[4u + c] = s;
            b[4u + C + c] = 1.0 / s;
            b[4u + 2u * C + c] = z;
        }
    }
    storageBarrier();
    if (on && lid == 0u) { b[2] = 1.0; }
}
