use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = dispatch_worker::config::Config::parse();
    dispatch_worker::startup::main(config).await
}
