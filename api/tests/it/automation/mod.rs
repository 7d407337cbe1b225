//! The api's side of tool calls, with a test subscriber standing in for the
//! automation-worker. With the real worker: `e2e/tests/it/automation`.

mod trace;
