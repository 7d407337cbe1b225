use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = api::config::Config::parse();
    api::startup::main(config).await
}
