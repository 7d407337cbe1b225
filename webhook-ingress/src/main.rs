use clap::Parser;

/// glibc's malloc cost this service several per cent of its CPU under
/// load (allocation-heavy async I/O); mimalloc is markedly cheaper.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = webhook_ingress::config::Config::parse();
    webhook_ingress::startup::main(config).await
}
