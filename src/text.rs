//! Short strings built without `core::fmt`: the set-up path builds a dozen small strings per
//! subscription (Call-ID, tags, branch, Via, Contact, mapped URIs and JIDs), and `format!`
//! spent about 5 % of its CPU in the formatting machinery (issue 7 profile).

/// The parts joined, in one allocation of exactly their length.
pub fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// Appends `v` in lower-case hex, zero-padded to at least `min_digits` (as `{:0N$x}`).
pub fn push_hex(out: &mut String, v: u64, min_digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let significant = (64 - v.leading_zeros() as usize).div_ceil(4).max(1);
    for i in (0..significant.max(min_digits)).rev() {
        let nibble = if i < 16 { (v >> (4 * i)) & 0xf } else { 0 };
        out.push(char::from(DIGITS[nibble as usize]));
    }
}

/// Appends the octet as `%XX` (upper-case hex), as in `format!("%{b:02X}")`.
pub fn push_pct(out: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(DIGITS[usize::from(b >> 4)]));
    out.push(char::from(DIGITS[usize::from(b & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn push_hex_is_format_x(v in any::<u64>(), width in 0usize..20) {
            let mut s = String::from("p");
            push_hex(&mut s, v, width);
            prop_assert_eq!(s, format!("p{v:0width$x}"));
        }

        #[test]
        fn push_pct_is_format_02x(b in any::<u8>()) {
            let mut s = String::new();
            push_pct(&mut s, b);
            prop_assert_eq!(s, format!("%{b:02X}"));
        }

        #[test]
        fn concat_is_join(parts in proptest::collection::vec(".{0,8}", 0..6)) {
            let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
            let s = concat(&refs);
            prop_assert_eq!(s.capacity(), s.len());
            prop_assert_eq!(s, parts.concat());
        }
    }

    #[test]
    fn edge_values() {
        let mut s = String::new();
        push_hex(&mut s, 0, 0);
        push_hex(&mut s, u64::MAX, 0);
        assert_eq!(s, "0ffffffffffffffff");
    }
}
