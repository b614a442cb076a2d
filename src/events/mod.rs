//! Feishu's event long connection (`--events`): changed faces arrive as
//! `acs.user.updated_v1` events over an outbound WebSocket, so facefs can
//! drop what changed at once instead of waiting for `--ttl`.
//!
//! - [`bootstrap`]: the connection URL and the server's schedule, held to bounds;
//! - [`connection`]: the thread that connects, pings, reads and reconnects;
//! - [`socket`]: the WebSocket under the reader's deadlines;
//! - [`frame`]: the `pbbp2` protobuf frames;
//! - [`message`]: fragments, the event JSON, duplicate event ids.

pub mod bootstrap;
pub mod connection;
pub mod frame;
pub mod message;
pub mod metrics;
pub mod socket;
