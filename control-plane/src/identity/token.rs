//! Bootstrap tokens: how a proxy proves, on its first connection, that it may hold a service's identity.
//!
//! A token names a namespace and service (and optionally one node id), expires after a short time and is accepted
//! once. It is `mwt1.<payload>.<mac>` (both lower-case hex): the payload is
//! `namespace|service|node|expiry-unix-seconds|nonce|ca-sha256|trust-domain`, the mac its HMAC-SHA256 under the control plane's
//! token key (`token.key` in the state directory), so `meshwork token create` can mint tokens without asking a
//! running control plane. `ca-sha256` is the digest of the mesh's root certificate: a proxy holding the token pins
//! it (and the trust domain), so it can check the control plane it talks to before it has any trust bundle.
//!
//! Used nonces are kept until their token expires (bounded: [`MAX_OUTSTANDING`]) and recorded in the state
//! directory, so a restarted control plane refuses a token it already accepted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The longest a token may live; the default is [`DEFAULT_TTL`].
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Used tokens remembered at once (each until it would have expired anyway); beyond that, new bootstraps wait.
pub const MAX_OUTSTANDING: usize = 100_000;
const PREFIX: &str = "mwt1.";
const KEY_FILE: &str = "token.key";
const USED_FILE: &str = "tokens-used";

/// Whom a token lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub namespace: String,
    pub service: String,
    /// The one node id that may use it; `None`: any.
    pub node: Option<String>,
    pub expires_unix: u64,
    pub nonce: String,
    /// Lower-case hex sha256 of the mesh's root certificate (DER).
    pub ca_sha256: String,
    pub trust_domain: String,
}

/// Why a token was refused. The messages go to the refused proxy: they say what is wrong, never the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no bootstrap token: a proxy joins with a token from `meshwork token create --service <name>` (or started by `meshwork up`), or with a certificate the control plane issued")]
    Missing,
    #[error("the bootstrap token is malformed: expected mwt1.<payload>.<mac> as `meshwork token create` prints it")]
    Malformed,
    #[error(
        "the bootstrap token was not made by this control plane (its signature does not verify)"
    )]
    BadSignature,
    #[error("the bootstrap token expired")]
    Expired,
    #[error("the bootstrap token has already been used (tokens are single-use)")]
    Used,
    #[error("the bootstrap token is for service {token}, not {hello}")]
    WrongService { token: String, hello: String },
    #[error("the bootstrap token is for node {token:?}, not {hello:?}")]
    WrongNode { token: String, hello: String },
    #[error("too many bootstrap tokens in use at once ({MAX_OUTSTANDING}); retry later")]
    Busy,
    #[error("could not record the used token: {0}")]
    Record(String),
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("--ttl: expected at most 24h, got {0:?}")]
    TooLong(Duration),
    #[error("--ttl: expected a positive duration")]
    Zero,
    #[error("{field}: expected a name without '|' or whitespace, got {value:?}")]
    BadField { field: &'static str, value: String },
    #[error("no OS random source for the token nonce: {0}")]
    Random(String),
}

type HmacSha256 = Hmac<Sha256>;

/// The key tokens are signed with, and the ledger of used ones.
pub struct Tokens {
    key: Vec<u8>,
    used: Mutex<HashMap<String, u64>>,
    /// Where used nonces are appended (None: memory only, for tests).
    ledger: Option<PathBuf>,
}

impl Tokens {
    /// Loads (or creates, mode 0600) the token key in `state_dir`, and the used tokens that have not expired yet.
    pub fn load_or_create(state_dir: &Path) -> std::io::Result<Tokens> {
        let key = super::state::secret_file(&state_dir.join(KEY_FILE), 32)?;
        let ledger = state_dir.join(USED_FILE);
        let now = unix_now();
        let used = match std::fs::read_to_string(&ledger) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(nonce, exp)| Some((nonce.to_string(), exp.parse::<u64>().ok()?)))
                .filter(|(_, exp)| *exp > now)
                .take(MAX_OUTSTANDING)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        // Rewritten without the expired entries, so the file does not grow without end.
        let kept: String = used.iter().map(|(n, e)| format!("{n} {e}\n")).collect();
        super::state::write_private(&ledger, kept.as_bytes())?;
        Ok(Tokens {
            key,
            used: Mutex::new(used),
            ledger: Some(ledger),
        })
    }

    /// The token key a control plane made in `state_dir`, for minting only (`meshwork token create`).
    pub fn load(state_dir: &Path) -> anyhow::Result<Tokens> {
        let path = state_dir.join(KEY_FILE);
        let key = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e} (start the control plane once to make it, or pass its --state-dir)",
                path.display()
            )
        })?;
        if key.len() != 32 {
            anyhow::bail!("{}: expected 32 bytes, found {}", path.display(), key.len());
        }
        Ok(Tokens::in_memory(key))
    }

    /// Tokens under `key`, remembered in memory only.
    pub fn in_memory(key: Vec<u8>) -> Tokens {
        Tokens {
            key,
            used: Mutex::new(HashMap::new()),
            ledger: None,
        }
    }

    /// A new token for `namespace/service` (and `node`, if given), valid for `ttl`.
    pub fn mint(
        &self,
        namespace: &str,
        service: &str,
        node: Option<&str>,
        ttl: Duration,
        ca_sha256: &str,
        trust_domain: &str,
    ) -> Result<String, MintError> {
        if ttl.is_zero() {
            return Err(MintError::Zero);
        }
        if ttl > MAX_TTL {
            return Err(MintError::TooLong(ttl));
        }
        for (field, value) in [
            ("--namespace", namespace),
            ("--service", service),
            ("--node", node.unwrap_or("x")),
        ] {
            if value.is_empty() || value.contains(['|', ' ', '\n', '\t']) {
                return Err(MintError::BadField {
                    field,
                    value: value.to_string(),
                });
            }
        }
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| MintError::Random(e.to_string()))?;
        let payload = format!(
            "{namespace}|{service}|{}|{}|{}|{ca_sha256}|{trust_domain}",
            node.unwrap_or(""),
            unix_now() + ttl.as_secs(),
            hex(&nonce)
        );
        let mac = self.mac(payload.as_bytes());
        Ok(format!("{PREFIX}{}.{}", hex(payload.as_bytes()), hex(&mac)))
    }

    /// Checks `token` for a proxy saying it is `node` of `namespace/service`, and spends it.
    pub fn redeem(
        &self,
        token: &str,
        namespace: &str,
        service: &str,
        node: &str,
    ) -> Result<Grant, TokenError> {
        let grant = self.check(token, namespace, service, node)?;
        self.spend(&grant)?;
        Ok(grant)
    }

    /// Everything `redeem` checks, without spending the token (the caller spends it with `spend` once what the
    /// token was for has worked, so a failure after the check does not waste it).
    pub fn check(
        &self,
        token: &str,
        namespace: &str,
        service: &str,
        node: &str,
    ) -> Result<Grant, TokenError> {
        let grant = self.verify(token)?;
        if grant.expires_unix <= unix_now() {
            return Err(TokenError::Expired);
        }
        if grant.namespace != namespace || grant.service != service {
            return Err(TokenError::WrongService {
                token: format!("{}/{}", grant.namespace, grant.service),
                hello: format!("{namespace}/{service}"),
            });
        }
        if let Some(bound) = grant.node.as_ref().filter(|n| n.as_str() != node) {
            return Err(TokenError::WrongNode {
                token: bound.clone(),
                hello: node.to_string(),
            });
        }
        if self
            .used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&grant.nonce)
        {
            return Err(TokenError::Used);
        }
        Ok(grant)
    }

    /// The token's grant if this control plane signed it (expiry and use not checked).
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let (payload_hex, mac_hex) = token
            .strip_prefix(PREFIX)
            .and_then(|t| t.split_once('.'))
            .ok_or(TokenError::Malformed)?;
        let payload = unhex(payload_hex).ok_or(TokenError::Malformed)?;
        let mac = unhex(mac_hex).ok_or(TokenError::Malformed)?;
        let mut check =
            HmacSha256::new_from_slice(&self.key).map_err(|_| TokenError::BadSignature)?;
        check.update(&payload);
        check
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadSignature)?;
        parse_grant(&payload).ok_or(TokenError::Malformed)
    }

    /// Marks the token of `grant` used (Err if it already was: two proxies racing with one token).
    pub fn spend(&self, grant: &Grant) -> Result<(), TokenError> {
        // Claimed under the lock, written to disk outside it (an fsync must not hold up other bootstraps); a
        // failed write gives the claim back.
        {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            if used.contains_key(&grant.nonce) {
                return Err(TokenError::Used);
            }
            if used.len() >= MAX_OUTSTANDING {
                let now = unix_now();
                used.retain(|_, exp| *exp > now);
                if used.len() >= MAX_OUTSTANDING {
                    return Err(TokenError::Busy);
                }
            }
            used.insert(grant.nonce.clone(), grant.expires_unix);
        }
        if let Some(path) = &self.ledger {
            if let Err(e) = append(path, &format!("{} {}\n", grant.nonce, grant.expires_unix)) {
                self.used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&grant.nonce);
                return Err(TokenError::Record(e.to_string()));
            }
        }
        Ok(())
    }

    fn mac(&self, payload: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length: this cannot fail.
        match HmacSha256::new_from_slice(&self.key) {
            Ok(mut m) => {
                m.update(payload);
                m.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
}

fn parse_grant(payload: &[u8]) -> Option<Grant> {
    let text = std::str::from_utf8(payload).ok()?;
    let parts: Vec<&str> = text.split('|').collect();
    let [namespace, service, node, exp, nonce, ca, td] = parts.as_slice() else {
        return None;
    };
    Some(Grant {
        namespace: namespace.to_string(),
        service: service.to_string(),
        node: Some(node.to_string()).filter(|n| !n.is_empty()),
        expires_unix: exp.parse().ok()?,
        nonce: nonce.to_string(),
        ca_sha256: ca.to_string(),
        trust_domain: td.to_string(),
    })
}

/// Appends a line and syncs it, so a used token stays used across a crash.
fn append(path: &Path, line: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(line.as_bytes())?;
    f.sync_data()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 4096 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    const CA: &str = "ab12";

    fn tokens() -> Tokens {
        Tokens::in_memory(vec![7; 32])
    }

    fn mint(t: &Tokens, node: Option<&str>) -> String {
        t.mint(
            "default",
            "frontend",
            node,
            DEFAULT_TTL,
            CA,
            "cluster.local",
        )
        .unwrap()
    }

    #[test]
    fn a_token_lets_its_service_in_once() {
        let t = tokens();
        let token = mint(&t, None);
        let grant = t
            .redeem(&token, "default", "frontend", "frontend-1")
            .unwrap();
        assert_eq!(
            (grant.service.as_str(), grant.ca_sha256.as_str()),
            ("frontend", CA)
        );
        assert_eq!(
            t.redeem(&token, "default", "frontend", "frontend-1"),
            Err(TokenError::Used)
        );
    }

    #[test]
    fn a_token_for_another_service_or_namespace_is_refused() {
        let t = tokens();
        let token = mint(&t, None);
        assert!(matches!(
            t.redeem(&token, "default", "backend", "b-1"),
            Err(TokenError::WrongService { .. })
        ));
        assert!(matches!(
            t.redeem(&token, "prod", "frontend", "f-1"),
            Err(TokenError::WrongService { .. })
        ));
        // Refusals do not spend it.
        assert!(t.redeem(&token, "default", "frontend", "f-1").is_ok());
    }

    #[test]
    fn a_token_bound_to_a_node_admits_only_that_node() {
        let t = tokens();
        let token = mint(&t, Some("frontend-0"));
        assert!(matches!(
            t.redeem(&token, "default", "frontend", "attacker"),
            Err(TokenError::WrongNode { .. })
        ));
        assert!(t
            .redeem(&token, "default", "frontend", "frontend-0")
            .is_ok());
    }

    #[test]
    fn a_token_from_another_key_or_edited_is_refused() {
        let token = mint(&tokens(), None);
        let other = Tokens::in_memory(vec![8; 32]);
        assert_eq!(
            other.redeem(&token, "default", "frontend", "f"),
            Err(TokenError::BadSignature)
        );
        // Swap the service in the payload, keep the mac.
        let (payload, mac) = token.strip_prefix(PREFIX).unwrap().split_once('.').unwrap();
        let text = String::from_utf8(unhex(payload).unwrap()).unwrap();
        let forged = format!(
            "{PREFIX}{}.{mac}",
            hex(text.replace("frontend", "backend").as_bytes())
        );
        assert_eq!(
            tokens().redeem(&forged, "default", "backend", "b"),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn malformed_and_missing_tokens_are_refused() {
        let t = tokens();
        for bad in [
            "mwt1.",
            "mwt1.zz.00",
            "nope",
            "mwt1.00",
            &"a".repeat(10_000),
        ] {
            assert_eq!(t.verify(bad), Err(TokenError::Malformed), "{bad:.20}");
        }
        assert_eq!(t.verify(""), Err(TokenError::Missing));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let t = tokens();
        let payload = format!("default|frontend||{}|00|{CA}|cluster.local", unix_now() - 1);
        let token = format!(
            "{PREFIX}{}.{}",
            hex(payload.as_bytes()),
            hex(&t.mac(payload.as_bytes()))
        );
        assert_eq!(
            t.redeem(&token, "default", "frontend", "f"),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn lifetimes_are_bounded() {
        let t = tokens();
        assert!(matches!(
            t.mint(
                "default",
                "f",
                None,
                MAX_TTL + Duration::from_secs(1),
                CA,
                "td"
            ),
            Err(MintError::TooLong(_))
        ));
        assert!(matches!(
            t.mint("default", "f", None, Duration::ZERO, CA, "td"),
            Err(MintError::Zero)
        ));
        assert!(matches!(
            t.mint("default", "a|b", None, DEFAULT_TTL, CA, "td"),
            Err(MintError::BadField { .. })
        ));
    }

    #[test]
    fn a_used_token_stays_used_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::load_or_create(dir.path()).unwrap();
        let token = mint(&t, None);
        t.redeem(&token, "default", "frontend", "f").unwrap();
        let again = Tokens::load_or_create(dir.path()).unwrap();
        assert_eq!(
            again.redeem(&token, "default", "frontend", "f"),
            Err(TokenError::Used)
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
