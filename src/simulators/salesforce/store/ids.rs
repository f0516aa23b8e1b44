//! Ids of the simulated org: the integration user and org ids, and the
//! 18-character record ids the store hands out and the REST handlers,
//! SOQL binding and query cursors accept in 15- or 18-character form.

/// The id of the simulated integration user (`CreatedById`, `commitUser`).
pub const USER_ID: &str = "005Dn000000XtSaIAK";
/// The simulated org's id.
pub const ORG_ID: &str = "00DDn00000AbCdEMAV";

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const CHECKSUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// An 18-character id: key prefix, pod, reserved digit, a base-62 counter
/// and the case-safe suffix. Ids of one object sort in creation order.
pub fn make_id(prefix: &str, n: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut v = n;
    for d in digits.iter_mut().rev() {
        *d = BASE62[(v % 62) as usize];
        v /= 62;
    }
    let id15 = format!(
        "{prefix}Dn0{}",
        std::str::from_utf8(&digits).expect("ascii")
    );
    to_18(&id15)
}

/// Adds the case-safe suffix to a 15-character id.
pub fn to_18(id15: &str) -> String {
    let mut out = id15.to_string();
    for chunk in id15.as_bytes().chunks(5) {
        let bits = chunk
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_ascii_uppercase())
            .fold(0usize, |acc, (i, _)| acc | (1 << i));
        out.push(CHECKSUM[bits] as char);
    }
    out
}

/// An id in its 18-character form, if it looks like one.
pub fn normalize_id(id: &str) -> Option<String> {
    if !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(to_18(id)),
        18 => Some(id.to_string()),
        _ => None,
    }
}
