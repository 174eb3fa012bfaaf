//! The broker binary: configuration, logging, bind, [`broker::run`], exit code.

use std::process::ExitCode;

use broker::config::Config;

/// `EX_CONFIG` from sysexits: the configuration is unusable.
const EXIT_CONFIG: u8 = 64;
/// `EX_UNAVAILABLE`: a service the broker needs is missing or not ready.
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let mut config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if config.is_dev_mode() {
        if let Some(token) = config.ensure_admin_token() {
            println!("dev mode: generated BROKER_ADMIN_TOKEN={token}");
        }
    } else if config.admin_token.is_none() {
        // Replicas must share one token, so none is invented here.
        eprintln!("broker: BROKER_ADMIN_TOKEN is unset: the operator API refuses every request");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = broker::telemetry::Telemetry::init(&config);
        let code = serve(config).await;
        telemetry.shutdown();
        code
    })
}

async fn serve(config: Config) -> ExitCode {
    {
        let addr = std::net::SocketAddr::new(config.host, config.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("broker: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Tests and scripts read this line to learn the port when BROKER_PORT=0.
        println!("listening on http://{local} (node {})", config.node_id);
        let mut listeners = broker::server::Listeners::from(listener);
        if let Some(port) = config.internal_port {
            let addr = std::net::SocketAddr::new(config.internal_host, port);
            let internal = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("broker: cannot listen on {addr} (BROKER_INTERNAL_PORT): {e}");
                    return ExitCode::FAILURE;
                }
            };
            let local = internal
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            // Right after the public line: the tests read both.
            println!("internal listening on http://{local}");
            listeners.internal = Some(internal);
        }
        match broker::run(config, listeners, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ broker::RunError::Unsupported(_)) => {
                eprintln!("broker: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
            Err(e) => {
                eprintln!("broker: {e}");
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
