//! Feishu's event long connection (`--events`): changed faces arrive as
//! `acs.user.updated_v1` events over an outbound WebSocket, so facefs can
//! drop what changed at once instead of waiting for `--ttl`.
//!
//! - [`frame`]: the `pbbp2` protobuf frames;
//! - [`message`]: fragments, the event JSON, duplicate event ids.

pub mod connection;
pub mod frame;
pub mod message;
pub mod metrics;
