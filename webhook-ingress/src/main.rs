use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = webhook_ingress::config::Config::parse();
    webhook_ingress::startup::main(config).await
}
