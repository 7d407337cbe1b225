//! The automation-worker binary itself. Its flows are tested end to end
//! from the api's tests, which drive it as the api does.

#[tokio::test]
async fn started_while_nats_is_down_it_is_alive_and_not_ready() {
    shared::testing::process::assert_alive_and_not_ready_while_nats_is_down(
        env!("CARGO_BIN_EXE_automation-worker"),
        "LISTEN_ADDR",
        &[],
    )
    .await;
}
