//! The identity flags `meshwork up` and `meshwork control` share (state directory, certificate lifetime),
//! and `meshwork token create`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use meshwork_identity::{Authority, TrustBundle};
use meshwork_manifest::model::read::parse_duration;
use meshwork_manifest::model::ManifestSet;
use sha2::{Digest, Sha256};

use crate::identity::token::Tokens;
use crate::identity::{state, Identities};

fn duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(str::to_string)
}

#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Where the mesh CA and the token key are kept (default: `.meshwork` in the manifest directory; never read
    /// as manifests). Keep it private: whoever reads it can mint identities.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Lifetime of the certificates issued to proxies, overriding the Mesh's `spec.identity.certificateLifetime`
    /// (default 24h; at least 10s, for tests). Proxies renew at 50-70% of it.
    #[arg(long, value_parser = duration)]
    pub cert_lifetime: Option<Duration>,
    /// Use the operator's CA instead of the one in the state directory: a PEM chain, signing certificate first (a
    /// root, or an intermediate followed by its chain up to the root, which becomes the trust anchor).
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PEM) of --ca-cert.
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Roots (PEM) still trusted besides the CA's own, while the mesh moves to a new CA: proxies holding
    /// certificates from the old one keep connecting until they renew (at 50-70% of their lifetime).
    #[arg(long)]
    pub also_trust: Option<PathBuf>,
}

impl IdentityArgs {
    pub fn state_dir(&self, manifests: &Path) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| manifests.join(state::DEFAULT_DIR))
    }

    /// The CA and tokens for a mesh whose manifests are in `manifests` (trust domain from its Mesh, if any).
    pub fn open(&self, manifests: &Path, set: &ManifestSet) -> anyhow::Result<Identities> {
        let dir = state::resolve(self.state_dir.as_deref(), manifests)
            .with_context(|| format!("state directory {}", self.state_dir(manifests).display()))?;
        let td = crate::identity::trust_domain_of(set)?;
        let lifetime = self
            .cert_lifetime
            .unwrap_or_else(|| meshwork_manifest::translate::certificate_lifetime(set));
        let ca = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => {
                Authority::from_files(cert, key, &td).with_context(|| {
                    format!("--ca-cert {} / --ca-key {}", cert.display(), key.display())
                })?
            }
            _ => Authority::load_or_create(&dir, &td)
                .with_context(|| format!("mesh CA in {}", dir.display()))?,
        };
        let ca = match &self.also_trust {
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("--also-trust {}", path.display()))?;
                let old = TrustBundle::from_pem(&pem).with_context(|| {
                    format!("--also-trust {}: expected PEM certificates", path.display())
                })?;
                ca.with_previous_roots(&old)
            }
            None => ca,
        };
        let tokens = Tokens::load_or_create(&dir)
            .with_context(|| format!("token key in {}", dir.display()))?;
        Ok(Identities::with(ca, tokens, lifetime))
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a single-use bootstrap token for one proxy of a service (give it to the proxy as
    /// MESHWORK_BOOTSTRAP_TOKEN or in the file named by --bootstrap-token-file, never on its command line).
    Create(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The service (or, with --gateway, the Gateway name) the proxy serves.
    #[arg(long)]
    pub service: String,
    /// The token is for a gateway proxy of the Gateway named by --service (a gateway's identity is its own).
    #[arg(long)]
    pub gateway: bool,
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Only a proxy with this node id may use the token.
    #[arg(long)]
    pub node: Option<String>,
    /// How long the token stays valid (at most 24h).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pub ttl: Duration,
    /// The control plane's state directory.
    #[arg(long, required_unless_present = "manifests")]
    pub state_dir: Option<PathBuf>,
    /// ... or its manifest directory (the state directory is its `.meshwork`).
    #[arg(long)]
    pub manifests: Option<PathBuf>,
}

pub fn run_token(cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create(args) = cmd;
    let dir = match (&args.state_dir, &args.manifests) {
        (Some(d), _) => d.clone(),
        (None, Some(m)) => m.join(state::DEFAULT_DIR),
        (None, None) => {
            anyhow::bail!("--state-dir or --manifests: expected the control plane's state")
        }
    };
    let ca = std::fs::read_to_string(dir.join("ca.pem")).with_context(|| {
        format!(
            "{}: no mesh CA there (start the control plane once, or pass its --state-dir)",
            dir.join("ca.pem").display()
        )
    })?;
    let bundle =
        TrustBundle::from_pem(&ca).with_context(|| dir.join("ca.pem").display().to_string())?;
    let root = bundle
        .roots()
        .first()
        .context("ca.pem holds no certificate")?;
    let pin = crate::identity::token::hex(&Sha256::digest(root.as_ref()));
    // Only read: the control plane makes the key (two processes making it at once would disagree on it).
    if args.namespace == crate::identity::RESERVED_NAMESPACE {
        anyhow::bail!(
            "--namespace {}: reserved for the control plane's own identities",
            args.namespace
        );
    }
    let tokens = Tokens::load(&dir)?;
    let td = ca_trust_domain(root)
        .unwrap_or_else(|| meshwork_identity::DEFAULT_TRUST_DOMAIN.to_string());
    let service = if args.gateway {
        format!("gateway:{}", args.service)
    } else {
        args.service.clone()
    };
    let token = tokens.mint(
        &args.namespace,
        &service,
        args.node.as_deref(),
        args.ttl,
        &pin,
        &td,
    )?;
    println!("{token}");
    Ok(())
}

/// The trust domain of the mesh root (its `spiffe://<trust-domain>` URI SAN).
fn ca_trust_domain(root: &[u8]) -> Option<String> {
    let id = meshwork_identity::svid::uri_sans(root)
        .ok()?
        .into_iter()
        .next()?;
    id.strip_prefix("spiffe://")
        .map(|td| td.trim_end_matches('/').to_string())
}
