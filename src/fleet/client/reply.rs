//! Redis replies (RESP2), read under limits the caller sets for each
//! command: Redis is a peer that may be hostile, and a reply announcing
//! `$2000000000` must cost neither 2 GB nor the mount.
//!
//! A bulk string over the limit is read past and not kept
//! ([`Reply::Oversized`]): the reply around it stays usable (a stream entry
//! too large is skipped, its id still read) and the connection in step.
//! Everything else that breaks the limits, or is not RESP2, is an error
//! that drops the connection. Time is bounded by the transport's deadline.

use std::io::Read;

use super::ClientError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    /// A simple string (`+OK`).
    Status(String),
    Bulk(Vec<u8>),
    /// A bulk string of this many bytes, over the limit: read past, not kept.
    Oversized(usize),
    Array(Vec<Reply>),
    /// The server's refusal (`-ERR ...`) inside a reply (a transaction's);
    /// at the top of a reply it is [`ClientError::Refused`] instead.
    Error(String),
}

/// What one reply may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bulk string kept.
    pub bulk: usize,
    /// Bytes kept over the whole reply, counting 16 for each array element.
    pub total: usize,
}

impl Limits {
    /// Replies of counters, statuses and short strings.
    pub const SMALL: Limits = Limits {
        bulk: 4 << 10,
        total: 64 << 10,
    };

    /// A reply of one value of at most `bytes`.
    pub fn value(bytes: usize) -> Limits {
        Limits {
            bulk: bytes,
            total: bytes.saturating_add(1 << 10),
        }
    }
}

/// Longest line (`+`, `-`, `:`, and the lengths of `$` and `*`).
const MAX_LINE: usize = 4 << 10;
/// Deepest nesting of arrays (a stream read nests four deep).
const MAX_DEPTH: usize = 6;

/// A buffered reader of replies over a byte stream.
pub struct ReplyReader<R> {
    inner: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: Read> ReplyReader<R> {
    pub fn new(inner: R) -> ReplyReader<R> {
        ReplyReader {
            inner,
            buf: vec![0; 16 << 10].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Whether bytes are waiting that no command asked for.
    pub fn has_buffered(&self) -> bool {
        self.start < self.end
    }

    /// Reads one reply within `limits`.
    pub fn read(&mut self, limits: Limits) -> Result<Reply, ClientError> {
        let mut left = limits.total;
        self.reply(limits, &mut left, 0)
    }

    fn reply(
        &mut self,
        limits: Limits,
        left: &mut usize,
        depth: usize,
    ) -> Result<Reply, ClientError> {
        // A line is paid for by the element charge of its array.
        let line = self.line()?;
        let (kind, rest) = line
            .split_first()
            .ok_or(ClientError::Protocol("an empty line"))?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        match kind {
            b'+' => Ok(Reply::Status(text())),
            b'-' => Ok(Reply::Error(text())),
            b':' => Ok(Reply::Int(number(rest)?)),
            b'$' => match number(rest)? {
                -1 => Ok(Reply::Nil),
                n if n < 0 => Err(ClientError::Protocol("a negative length")),
                n => {
                    let n = usize::try_from(n)
                        .map_err(|_| ClientError::Protocol("a length past memory"))?;
                    if n > limits.bulk || n > *left {
                        self.skip(n)?;
                        self.crlf()?;
                        return Ok(Reply::Oversized(n));
                    }
                    *left -= n;
                    let bytes = self.exact(n)?;
                    self.crlf()?;
                    Ok(Reply::Bulk(bytes))
                }
            },
            b'*' => match number(rest)? {
                -1 => Ok(Reply::Nil),
                n if n < 0 => Err(ClientError::Protocol("a negative length")),
                n => {
                    if depth >= MAX_DEPTH {
                        return Err(ClientError::Protocol("arrays nested too deep"));
                    }
                    let n = usize::try_from(n)
                        .map_err(|_| ClientError::Protocol("a length past memory"))?;
                    // Each element is charged before it is read: a huge
                    // count fails here, not after filling memory.
                    charge(left, n.saturating_mul(16))?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.reply(limits, left, depth + 1)?);
                    }
                    Ok(Reply::Array(items))
                }
            },
            _ => Err(ClientError::Protocol("not a RESP2 reply")),
        }
    }

    /// Reads more into the buffer; an end of stream is an error.
    fn fill(&mut self) -> Result<(), ClientError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ClientError::from_io(e)),
            }
        };
        if n == 0 {
            return Err(ClientError::Closed);
        }
        self.end += n;
        Ok(())
    }

    /// One line without its CRLF, at most [`MAX_LINE`] bytes.
    fn line(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut searched = 0;
        loop {
            let window = &self.buf[self.start + searched..self.end];
            if let Some(at) = window.windows(2).position(|w| w == b"\r\n") {
                let end = self.start + searched + at;
                let line = self.buf[self.start..end].to_vec();
                self.start = end + 2;
                return Ok(line);
            }
            searched = (self.end - self.start).saturating_sub(1);
            if searched > MAX_LINE {
                return Err(ClientError::Protocol("a line too long"));
            }
            self.fill()?;
        }
    }

    fn exact(&mut self, n: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.start == self.end {
                self.fill()?;
            }
            let take = (n - out.len()).min(self.end - self.start);
            out.extend_from_slice(&self.buf[self.start..self.start + take]);
            self.start += take;
        }
        Ok(out)
    }

    fn skip(&mut self, mut n: usize) -> Result<(), ClientError> {
        while n > 0 {
            if self.start == self.end {
                self.fill()?;
            }
            let take = n.min(self.end - self.start);
            self.start += take;
            n -= take;
        }
        Ok(())
    }

    fn crlf(&mut self) -> Result<(), ClientError> {
        match self.exact(2)?.as_slice() {
            b"\r\n" => Ok(()),
            _ => Err(ClientError::Protocol("a bulk string not ended by CRLF")),
        }
    }
}

fn charge(left: &mut usize, bytes: usize) -> Result<(), ClientError> {
    *left = left
        .checked_sub(bytes)
        .ok_or(ClientError::Protocol("a reply over its size limit"))?;
    Ok(())
}

fn number(text: &[u8]) -> Result<i64, ClientError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(ClientError::Protocol("not a number"))
}

impl Reply {
    /// An integer, or a bulk string holding one (what `GET` of a counter answers).
    pub fn int(self) -> Result<i64, ClientError> {
        match self {
            Reply::Int(n) => Ok(n),
            Reply::Bulk(b) => number(&b).map_err(|_| ClientError::Unexpected("not a number")),
            _ => Err(ClientError::Unexpected("not an integer")),
        }
    }

    /// A value or nothing (`GET`); an oversized value is an error that
    /// leaves the connection usable.
    pub fn value(self) -> Result<Option<Vec<u8>>, ClientError> {
        match self {
            Reply::Nil => Ok(None),
            Reply::Bulk(b) => Ok(Some(b)),
            Reply::Oversized(n) => Err(ClientError::Oversized(n)),
            _ => Err(ClientError::Unexpected("not a value")),
        }
    }

    /// `+OK` (true) or nil (false): what `SET ... NX` answers.
    pub fn ok_or_nil(self) -> Result<bool, ClientError> {
        match self {
            Reply::Status(_) => Ok(true),
            Reply::Nil => Ok(false),
            _ => Err(ClientError::Unexpected("neither OK nor nil")),
        }
    }

    pub fn array(self) -> Result<Vec<Reply>, ClientError> {
        match self {
            Reply::Array(items) => Ok(items),
            _ => Err(ClientError::Unexpected("not an array")),
        }
    }

    /// An array of exactly two integers (what facefs's scripts answer).
    pub fn two_ints(self) -> Result<(i64, i64), ClientError> {
        let mut items = self.array()?.into_iter();
        match (items.next(), items.next(), items.next()) {
            (Some(a), Some(b), None) => Ok((a.int()?, b.int()?)),
            _ => Err(ClientError::Unexpected("not two numbers")),
        }
    }

    /// A short text (a stream id, a field name); `None` if it is not one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Bulk(b) => std::str::from_utf8(b).ok(),
            Reply::Status(s) => Some(s),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `chunk` bytes at a time, as a socket may.
    struct Trickle<'a> {
        bytes: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    fn read(bytes: &[u8], limits: Limits) -> Result<Reply, ClientError> {
        let mut last = None;
        for chunk in [1, 3, 1 << 20] {
            let got = ReplyReader::new(Trickle { bytes, chunk }).read(limits);
            if let Some(last) = &last {
                assert_eq!(format!("{last:?}"), format!("{got:?}"), "chunk {chunk}");
            }
            last = Some(got);
        }
        last.unwrap()
    }

    #[test]
    fn every_reply_kind_reads_in_any_chunking() {
        let reply = read(
            b"*6\r\n+OK\r\n-ERR no\r\n:-42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*2\r\n$0\r\n\r\n*-1\r\n",
            Limits::SMALL,
        )
        .unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Status("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Int(-42),
                Reply::Bulk(b"he\r\nl".to_vec()),
                Reply::Nil,
                Reply::Array(vec![Reply::Bulk(vec![]), Reply::Nil]),
            ])
        );
    }

    #[test]
    fn a_value_over_the_limit_is_read_past_and_the_rest_kept() {
        let mut bytes = b"*3\r\n$3\r\nabc\r\n$100000\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 100_000));
        bytes.extend_from_slice(b"\r\n$2\r\nid\r\n+NEXT\r\n");
        let mut reader = ReplyReader::new(Trickle {
            bytes: &bytes,
            chunk: 7000,
        });
        let reply = reader
            .read(Limits {
                bulk: 1000,
                total: 10_000,
            })
            .unwrap();
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Bulk(b"abc".to_vec()),
                Reply::Oversized(100_000),
                Reply::Bulk(b"id".to_vec()),
            ])
        );
        // In step: the next reply reads as itself.
        assert_eq!(
            reader.read(Limits::SMALL).unwrap(),
            Reply::Status("NEXT".into())
        );
        assert_eq!(
            Reply::Oversized(5).value().unwrap_err().to_string(),
            ClientError::Oversized(5).to_string()
        );
    }

    #[test]
    fn huge_announcements_cost_no_memory() {
        // Two billion bytes announced, none sent: no allocation, an error at the end of the stream.
        let got = read(b"$2000000000\r\nabc", Limits::value(1 << 20));
        assert!(matches!(got, Err(ClientError::Closed)), "{got:?}");
        for bad in [
            &b"*2000000000\r\n"[..],
            b"*9223372036854775807\r\n",
            b"$-7\r\n",
            b"$99999999999999999999999\r\n",
            b"%1\r\n",
            b"$3\r\nabcXY",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            let got = read(bad, Limits::SMALL);
            assert!(
                matches!(got, Err(ClientError::Protocol(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long = b"+".to_vec();
        long.extend(std::iter::repeat_n(b'a', 100_000));
        assert!(matches!(
            read(&long, Limits::SMALL),
            Err(ClientError::Protocol("a line too long"))
        ));
        // Many small values past the total: refused, not kept.
        let mut many = b"*1000\r\n".to_vec();
        for _ in 0..1000 {
            many.extend_from_slice(b"$100\r\n");
            many.extend(std::iter::repeat_n(b'v', 100));
            many.extend_from_slice(b"\r\n");
        }
        let got = read(
            &many,
            Limits {
                bulk: 1000,
                total: 50_000,
            },
        )
        .unwrap()
        .array()
        .unwrap();
        let kept = got.iter().filter(|r| matches!(r, Reply::Bulk(_))).count();
        assert!(kept < 500 && got.len() == 1000, "{kept}");
    }

    #[test]
    fn typed_views() {
        assert_eq!(Reply::Bulk(b"17".to_vec()).int().unwrap(), 17);
        assert!(matches!(
            Reply::Bulk(b"x".to_vec()).int(),
            Err(ClientError::Unexpected(_))
        ));
        assert_eq!(Reply::Nil.value().unwrap(), None);
        assert!(Reply::Status("OK".into()).ok_or_nil().unwrap());
        assert!(!Reply::Nil.ok_or_nil().unwrap());
    }
}
