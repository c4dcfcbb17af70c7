//! The raftkv server.

use clap::Parser;
use raftkv::config::Config;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_env("RAFTKV_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    raftkv::tls::install_default_provider();
    init_logging(&cfg);
    let rt = tokio::runtime::Runtime::new()?;
    if let Err(e) = rt.block_on(raftkv::server::run(cfg, shutdown_signal())) {
        tracing::error!("{e}");
        eprintln!("raftkv: {e}");
        std::process::exit(1);
    }
    Ok(())
}
