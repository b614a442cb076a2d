//! The long connection's frames: `pbbp2.Frame` (proto2), one per binary
//! WebSocket message, as the official SDKs define it (oapi-sdk-go
//! `ws/pbbp2.pb.go`, lark_oapi `ws/pb/pbbp2_pb2.py`).
//!
//! The fields the schema marks `required` are always encoded, zeros too:
//! the Go SDK's decoder (and so, probably, the server) rejects a frame
//! without them, and a proto3-style encoder would skip zeros. Decoding is
//! lenient (prost reads a missing field as zero; unknown fields are skipped).

use prost::Message;

#[derive(Clone, PartialEq, Eq, Message)]
pub struct Header {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, required, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Eq, Message)]
pub struct Frame {
    #[prost(uint64, required, tag = "1")]
    pub seq_id: u64,
    #[prost(uint64, required, tag = "2")]
    pub log_id: u64,
    #[prost(int32, required, tag = "3")]
    pub service: i32,
    /// [`CONTROL`] or [`DATA`].
    #[prost(int32, required, tag = "4")]
    pub method: i32,
    #[prost(message, repeated, tag = "5")]
    pub headers: Vec<Header>,
    #[prost(string, optional, tag = "6")]
    pub payload_encoding: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub payload_type: Option<String>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub payload: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub log_id_new: Option<String>,
}

/// `method` of pings and pongs.
pub const CONTROL: i32 = 0;
/// `method` of events and their acknowledgements.
pub const DATA: i32 = 1;

/// Header keys.
pub const TYPE: &str = "type";
pub const MESSAGE_ID: &str = "message_id";
pub const SUM: &str = "sum";
pub const SEQ: &str = "seq";
pub const BIZ_RT: &str = "biz_rt";

impl Frame {
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.key == key)
            .map(|h| h.value.as_str())
    }

    /// A control frame of `kind` (`ping`, `pong`) for the service.
    pub fn control(service: i32, kind: &str) -> Frame {
        Frame {
            service,
            method: CONTROL,
            headers: vec![Header {
                key: TYPE.into(),
                value: kind.into(),
            }],
            ..Frame::default()
        }
    }

    /// The acknowledgement of this (data) frame: the frame itself with the
    /// handler's time added and a `{"code":200}` answer as its payload.
    pub fn ack(&self, handled_ms: u64) -> Frame {
        let mut ack = self.clone();
        ack.headers.push(Header {
            key: BIZ_RT.into(),
            value: handled_ms.to_string(),
        });
        ack.payload = Some(br#"{"code":200}"#.to_vec());
        ack
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Frame, prost::DecodeError> {
        Frame::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// The golden ping of ../shared/feishu-events.md §2.3 (service 33554678),
    /// worked out from the proto2 wire format, not by this code.
    #[test]
    fn a_ping_encodes_every_required_field_even_zero() {
        let ping = Frame::control(33_554_678, "ping");
        assert_eq!(
            ping.to_bytes(),
            hex("08 00 10 00 18 f6 81 80 10 20 00 2a 0c 0a 04 74 79 70 65 12 04 70 69 6e 67")
        );
    }

    #[test]
    fn the_go_sdks_form_with_empty_optional_strings_decodes_too() {
        let go = hex("08 00 10 00 18 f6 81 80 10 20 00 2a 0c 0a 04 74 79 70 65 12 04 70 69 6e 67 32 00 3a 00 4a 00");
        let frame = Frame::from_bytes(&go).unwrap();
        assert_eq!(frame.header(TYPE), Some("ping"));
        assert_eq!(frame.service, 33_554_678);
        assert_eq!(frame.payload_type.as_deref(), Some(""));
        // An unknown field (tag 15, varint) is skipped.
        let mut extended = go.clone();
        extended.extend_from_slice(&[0x78, 0x01]);
        assert_eq!(Frame::from_bytes(&extended).unwrap(), frame);
    }

    /// prost does not refuse a frame missing a required field on decode
    /// (it reads as zero), which is the lenient side; what matters is that
    /// facefs never sends one: an all-zero frame still carries fields 1-4.
    #[test]
    fn an_all_zero_frame_still_carries_the_required_fields_and_garbage_is_refused() {
        assert_eq!(Frame::default().to_bytes(), hex("08 00 10 00 18 00 20 00"));
        assert!(Frame::from_bytes(b"not protobuf at all").is_err());
    }

    #[test]
    fn an_ack_is_the_frame_back_with_biz_rt_and_code_200() {
        let event = Frame {
            seq_id: 7,
            log_id: 9,
            service: 3,
            method: DATA,
            headers: vec![Header {
                key: MESSAGE_ID.into(),
                value: "m1".into(),
            }],
            payload: Some(b"{}".to_vec()),
            ..Frame::default()
        };
        let ack = Frame::from_bytes(&event.ack(2).to_bytes()).unwrap();
        assert_eq!(
            (ack.seq_id, ack.log_id, ack.service, ack.method),
            (7, 9, 3, DATA)
        );
        assert_eq!(ack.header(MESSAGE_ID), Some("m1"));
        assert_eq!(ack.header(BIZ_RT), Some("2"));
        assert_eq!(ack.payload.as_deref(), Some(&br#"{"code":200}"#[..]));
    }
}
