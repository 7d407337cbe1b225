use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = automation_worker::config::Config::parse();
    automation_worker::startup::main(config).await
}
