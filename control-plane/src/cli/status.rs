//! `meshwork status`: the proxies connected to a control plane.

use clap::Args;
use meshwork_proto as pb;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Control-plane gRPC address.
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub control_plane: String,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = if args.control_plane.contains("://") {
        args.control_plane.clone()
    } else {
        format!("http://{}", args.control_plane)
    };
    let mut client = pb::discovery_client::DiscoveryClient::connect(url.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the control plane at {url}: {e}"))?;
    let status = client.status(pb::StatusRequest {}).await?.into_inner();
    print!("{}", render(&status));
    Ok(())
}

pub fn render(status: &pb::StatusResponse) -> String {
    let mut out = format!("manifest generation {}\n", status.manifest_generation);
    if !status.rejected_errors.is_empty() {
        out.push_str("last change REJECTED (still serving the previous set):\n");
        for e in &status.rejected_errors {
            out.push_str(&format!("  {e}\n"));
        }
    }
    let rows: Vec<[String; 6]> = status
        .proxies
        .iter()
        .map(|p| {
            let role = match pb::Role::try_from(p.role) {
                Ok(pb::Role::Gateway) => "gateway",
                Ok(pb::Role::Sidecar) => "sidecar",
                _ => "?",
            };
            let nack = if p.last_nack.is_empty() {
                "-".to_string()
            } else {
                format!("v{}: {}", p.last_nack_version, p.last_nack)
            };
            [
                p.node_id.clone(),
                p.service.clone(),
                role.to_string(),
                format!("v{}", p.acked_version),
                format!("v{}", p.sent_version),
                nack,
            ]
        })
        .collect();
    let header = ["NODE", "SERVICE", "ROLE", "ACKED", "SENT", "LAST NACK"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
