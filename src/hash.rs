//! Non-cryptographic hashing the layers share: FNV-1a digests (the same in
//! every process and on every machine: inode numbers, store file names,
//! the mtime of a face) and a xorshift generator (jitter, test data). A
//! leaf: it depends on no other module.

/// FNV-1a of `bytes`.
pub fn digest(bytes: &[u8]) -> u64 {
    digest_of_parts(&[bytes])
}

/// The digest of `parts` as if they were one run of bytes, without
/// copying them together.
pub fn digest_of_parts(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The next state of a xorshift64 generator (`state` must not be 0).
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A xorshift64 output as a float in `[0, 1)`.
pub fn unit_float(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A random duration in `[0, limit)`, for jitter: seeded by the clock, the
/// process and a counter, so that mounts (and calls) started together differ.
pub fn random_up_to(limit: std::time::Duration) -> std::time::Duration {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut state = digest(
        &[
            nanos.to_le_bytes(),
            u64::from(std::process::id()).to_le_bytes(),
            calls.to_le_bytes(),
        ]
        .concat(),
    ) | 1;
    limit.mul_f64(unit_float(xorshift(&mut state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_fnv1a_and_parts_read_as_one_run() {
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(digest_of_parts(&[b"fa", b"ce"]), digest(b"face"));
    }

    #[test]
    fn xorshift_never_returns_zero_and_floats_stay_below_one() {
        let mut state = 1;
        for _ in 0..10_000 {
            let x = xorshift(&mut state);
            assert_ne!(x, 0);
            assert!((0.0..1.0).contains(&unit_float(x)));
        }
    }
}
