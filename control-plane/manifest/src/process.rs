//! Process plumbing shared by `meshwork` and `meshwork-proxy`: logging initialisation and the shutdown signal.
//! It lives here, not in either binary's crate, because this is the one crate both link.

/// The environment variable that `--log-format` also reads (so that `meshwork up` passes it on to its proxies).
pub const LOG_FORMAT_ENV: &str = "MESHWORK_LOG_FORMAT";

/// Logs to stderr, filtered by `MESHWORK_LOG` (tracing's `EnvFilter` syntax) or else by `default`: as text
/// (colours only when stderr is a terminal) or, with `json`, one JSON object per line (`timestamp`, `level`,
/// `fields.message` and the event's other fields, the spans it is in). A second call does nothing.
pub fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MESHWORK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
