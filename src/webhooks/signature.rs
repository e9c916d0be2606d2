//! Webhook signatures, as Stripe (`Stripe-Signature`) and Duffel (`X-Duffel-Signature`) send
//! them: `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "{t}.{raw body}")>`, possibly with
//! several `v1=` values (the provider signs with every active secret during its rotation).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signature was refused. The variant names are the `reason` label of
/// `fleet_webhook_rejections_total` and the short text of the 4xx reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("missing signature header")]
    Missing,
    /// The header is not `t=…,v1=…`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is older than the tolerance.
    #[error("timestamp outside the tolerance (too old)")]
    Stale,
    /// The timestamp is further in the future than the tolerance.
    #[error("timestamp outside the tolerance (in the future)")]
    Future,
    /// No `v1` matches any of our secrets.
    #[error("signature does not match")]
    Mismatch,
}

impl SignatureError {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "missing_signature",
            Self::Malformed => "malformed_signature",
            Self::Stale => "stale_timestamp",
            Self::Future => "future_timestamp",
            Self::Mismatch => "bad_signature",
        }
    }
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Hex HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// The header value (`t=…,v1=…`) for `body` signed at `timestamp`.
pub fn header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Longest signature header read; longer is [`SignatureError::Malformed`] before any work.
pub const MAX_HEADER_LEN: usize = 2048;
/// Most `v1=` values read; more is [`SignatureError::Malformed`]. A provider sends one per
/// active secret (two during a rotation), so 8 is generous, and it bounds the comparisons an
/// attacker can make us do per request.
pub const MAX_CANDIDATES: usize = 8;

/// Verifies `header` against `body`: the timestamp within `tolerance_secs` of `now` both ways,
/// and some `v1` equal — compared in constant time — to the HMAC under one of `secrets`.
///
/// Cost is bounded whatever the sender does: the header is at most [`MAX_HEADER_LEN`] bytes
/// with at most [`MAX_CANDIDATES`] values (checked before any hashing), the timestamp is
/// checked before any hashing, and the body is hashed once per secret (not per candidate).
pub fn verify(
    header: Option<&str>,
    secrets: &[String],
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    use subtle::ConstantTimeEq;
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed);
    }
    let mut timestamp = None;
    let mut candidates: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => {
                timestamp = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v)) => {
                if candidates.len() == MAX_CANDIDATES {
                    return Err(SignatureError::Malformed);
                }
                let mut digest = [0u8; 32];
                // A v1 that is not 64 hex digits can never match: refuse it as malformed.
                hex::decode_to_slice(v, &mut digest).map_err(|_| SignatureError::Malformed)?;
                candidates.push(digest);
            }
            Some(_) => {} // other schemes (v0, …) are ignored, as the providers document
            None => return Err(SignatureError::Malformed),
        }
    }
    let t = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.saturating_sub(t) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    if t.saturating_sub(now) > tolerance_secs {
        return Err(SignatureError::Future);
    }
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = mac(secret, t, body).finalize().into_bytes();
        for c in &candidates {
            matched |= expected.as_slice().ct_eq(c);
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn secrets(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_valid_signature_verifies_and_any_change_refuses_it() {
        let h = header("whsec_a", NOW, b"{}");
        assert_eq!(
            verify(Some(&h), &secrets(&["whsec_a"]), b"{}", NOW, 300),
            Ok(())
        );
        assert_eq!(
            verify(Some(&h), &secrets(&["whsec_a"]), b"{ }", NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&h), &secrets(&["whsec_b"]), b"{}", NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn tolerance_applies_both_ways() {
        let old = header("s", NOW - 301, b"x");
        assert_eq!(
            verify(Some(&old), &secrets(&["s"]), b"x", NOW, 300),
            Err(SignatureError::Stale)
        );
        let future = header("s", NOW + 301, b"x");
        assert_eq!(
            verify(Some(&future), &secrets(&["s"]), b"x", NOW, 300),
            Err(SignatureError::Future)
        );
        let edge = header("s", NOW - 300, b"x");
        assert_eq!(
            verify(Some(&edge), &secrets(&["s"]), b"x", NOW, 300),
            Ok(())
        );
    }

    #[test]
    fn several_v1_values_and_several_secrets_allow_rotation() {
        let h = format!(
            "t={NOW},v1={},v1={}",
            sign("old", NOW, b"x"),
            sign("new", NOW, b"x")
        );
        assert_eq!(verify(Some(&h), &secrets(&["new"]), b"x", NOW, 300), Ok(()));
        let h = header("old", NOW, b"x");
        assert_eq!(
            verify(Some(&h), &secrets(&["new", "old"]), b"x", NOW, 300),
            Ok(())
        );
    }

    #[test]
    fn malformed_headers_are_named() {
        for h in [
            "",
            "t=abc,v1=00",
            "v1=00",
            &format!("t={NOW}"),
            &format!("t={NOW},v1=zz"),
            "garbage",
            &format!("t={NOW},v1=00"),
        ] {
            assert_eq!(
                verify(Some(h), &secrets(&["s"]), b"x", NOW, 300),
                Err(SignatureError::Malformed),
                "{h:?}"
            );
        }
        assert_eq!(
            verify(None, &secrets(&["s"]), b"x", NOW, 300),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn oversized_headers_and_too_many_values_are_refused_before_hashing() {
        let one = sign("s", NOW, b"x");
        let nine = format!("t={NOW}{}", format!(",v1={one}").repeat(MAX_CANDIDATES + 1));
        assert!(nine.len() < MAX_HEADER_LEN);
        assert_eq!(
            verify(Some(&nine), &secrets(&["s"]), b"x", NOW, 300),
            Err(SignatureError::Malformed)
        );
        let eight = format!("t={NOW}{}", format!(",v1={one}").repeat(MAX_CANDIDATES));
        assert_eq!(
            verify(Some(&eight), &secrets(&["s"]), b"x", NOW, 300),
            Ok(())
        );
        let long = format!("t={NOW},v1={one},{}", "x=1,".repeat(MAX_HEADER_LEN / 4));
        assert_eq!(
            verify(Some(&long), &secrets(&["s"]), b"x", NOW, 300),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn extreme_timestamps_are_stale_or_future_not_an_overflow() {
        for (t, want) in [
            (i64::MIN, SignatureError::Stale),
            (i64::MAX, SignatureError::Future),
        ] {
            let h = format!("t={t},v1={}", sign("s", t, b"x"));
            assert_eq!(
                verify(Some(&h), &secrets(&["s"]), b"x", NOW, 300),
                Err(want)
            );
        }
    }
}
