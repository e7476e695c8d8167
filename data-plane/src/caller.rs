//! `x-meshwork-source`, the calling service as an outbound sidecar states it and an inbound sidecar checks it
//! (issue 11, item 7). Until mTLS carries verified identities, the statement travels with a proof: the
//! HMAC-SHA256 of its value under the mesh key (which the control plane pushes to sidecars only), hex in
//! `x-meshwork-source-proof`. An inbound sidecar keeps the source only when the proof holds under a key it knows;
//! the proof itself never reaches the app or the next hop.

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;

use crate::resilience::call::SOURCE_HEADER;

pub const PROOF_HEADER: HeaderName = HeaderName::from_static("x-meshwork-source-proof");

type HmacSha256 = Hmac<Sha256>;

/// Keeps `x-meshwork-source` only if `x-meshwork-source-proof` proves it under one of `keys`; removes the proof.
pub fn check(keys: &[Bytes], headers: &mut HeaderMap) {
    let proof = headers.remove(PROOF_HEADER);
    let Some(source) = headers.get(SOURCE_HEADER) else {
        return;
    };
    let proven = proof
        .as_ref()
        .and_then(|p| decode_hex(p.as_bytes()))
        .is_some_and(|p| keys.iter().any(|k| mac(k, source).verify_slice(&p).is_ok()));
    if !proven {
        tracing::debug!("x-meshwork-source without a valid proof: removed");
        headers.remove(SOURCE_HEADER);
    }
}

/// States `source` with its proof under `key` (or, with no key, removes any proof: the inbound side will then
/// not trust the source).
pub fn state(
    cache: &ProofCache,
    key: Option<&Bytes>,
    source: &HeaderValue,
    headers: &mut HeaderMap,
) {
    headers.insert(SOURCE_HEADER, source.clone());
    match key.and_then(|k| cache.proof(k, source)) {
        Some(p) => headers.insert(PROOF_HEADER, p),
        None => headers.remove(PROOF_HEADER),
    };
}

/// The outbound listener's proof of its one source value, computed once per mesh key rather than per request.
#[derive(Default)]
pub struct ProofCache(ArcSwapOption<(Bytes, HeaderValue)>);

impl ProofCache {
    fn proof(&self, key: &Bytes, source: &HeaderValue) -> Option<HeaderValue> {
        if let Some(cached) = self.0.load().as_deref() {
            if cached.0 == *key {
                return Some(cached.1.clone());
            }
        }
        let hex: String = mac(key, source)
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let value = HeaderValue::from_str(&hex).ok()?;
        self.0
            .store(Some(std::sync::Arc::new((key.clone(), value.clone()))));
        Some(value)
    }
}

fn mac(key: &[u8], source: &HeaderValue) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(source.as_bytes());
    m
}

fn decode_hex(s: &[u8]) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    s.chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(source: Option<&str>, proof: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(s) = source {
            h.insert(
                SOURCE_HEADER,
                HeaderValue::from_str(s).unwrap_or_else(|_| unreachable!()),
            );
        }
        if let Some(p) = proof {
            h.insert(
                PROOF_HEADER,
                HeaderValue::from_str(p).unwrap_or_else(|_| unreachable!()),
            );
        }
        h
    }

    #[test]
    fn a_stated_source_passes_the_check_and_loses_its_proof() {
        let key = Bytes::from_static(&[7; 32]);
        let mut h = HeaderMap::new();
        state(
            &ProofCache::default(),
            Some(&key),
            &HeaderValue::from_static("web.default"),
            &mut h,
        );
        check(std::slice::from_ref(&key), &mut h);
        assert_eq!(
            h.get(SOURCE_HEADER).map(|v| v.as_bytes()),
            Some(&b"web.default"[..])
        );
        assert!(h.get(PROOF_HEADER).is_none());
    }

    #[test]
    fn a_forged_or_unproven_source_is_removed() {
        let key = Bytes::from_static(&[7; 32]);
        let mut stated = HeaderMap::new();
        state(
            &ProofCache::default(),
            Some(&key),
            &HeaderValue::from_static("web.default"),
            &mut stated,
        );
        let web_proof = stated
            .get(PROOF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        for mut h in [
            headers(Some("admin.default"), None),
            headers(Some("admin.default"), Some("00")),
            headers(Some("admin.default"), web_proof.as_deref()),
            headers(Some("admin.default"), Some(&"zz".repeat(32))),
        ] {
            check(std::slice::from_ref(&key), &mut h);
            assert!(h.get(SOURCE_HEADER).is_none(), "{h:?}");
            assert!(h.get(PROOF_HEADER).is_none());
        }
        // A proof under another mesh's key proves nothing here.
        let mut h = stated.clone();
        check(&[Bytes::from_static(&[8; 32])], &mut h);
        assert!(h.get(SOURCE_HEADER).is_none());
    }

    #[test]
    fn the_previous_key_is_still_accepted() {
        let (old, new) = (Bytes::from_static(&[1; 32]), Bytes::from_static(&[2; 32]));
        let mut h = HeaderMap::new();
        state(
            &ProofCache::default(),
            Some(&old),
            &HeaderValue::from_static("web.default"),
            &mut h,
        );
        check(&[new, old], &mut h);
        assert!(h.get(SOURCE_HEADER).is_some());
    }
}
