//! The dispatch-worker binary while a dependency is down.

#[tokio::test]
async fn started_while_nats_is_down_it_is_alive_and_not_ready() {
    shared::testing::process::assert_alive_and_not_ready_while_nats_is_down(
        env!("CARGO_BIN_EXE_dispatch-worker"),
        "LISTEN_ADDR",
        &[],
    )
    .await;
}
