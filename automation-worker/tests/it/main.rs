//! The automation-worker binary on its own. The tool calls it runs (with
//! the api and a fake n8n) are tested end to end in `e2e/`.

#[tokio::test]
async fn started_while_nats_is_down_it_is_alive_and_not_ready() {
    shared::testing::process::assert_alive_and_not_ready_while_nats_is_down(
        env!("CARGO_BIN_EXE_automation-worker"),
        "LISTEN_ADDR",
        &[],
    )
    .await;
}
