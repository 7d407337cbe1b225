use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::install_crypto_providers();
    let config = reference_runtime::config::Config::parse();
    shared::telemetry::init_logging(config.log_format);
    let shutdown = shared::shutdown::token_on_signal();
    reference_runtime::run(config, shutdown).await
}
