// Flat element index of a 1-D problem dispatched as a 2-D grid of `wg`-wide workgroups
// (`gid.y` rows of `nwg.x` workgroups: the host splits dispatches past the 65535 limit).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg;
}
