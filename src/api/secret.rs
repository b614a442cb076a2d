//! A string that must never reach a log, an error message or a panic: the
//! app secret and every token. It has no `Display`, and `Debug` hides it.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    /// Overwrites the value, so that freed memory holds no secret or token.
    fn drop(&mut self) {
        // SAFETY: NUL bytes keep the string valid UTF-8; volatile writes are
        // not optimised away as dead stores.
        for byte in unsafe { self.0.as_bytes_mut() } {
            unsafe { std::ptr::write_volatile(byte, 0) };
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("t-very-secret");
        assert!(!format!("{s:?}").contains("very"));
        assert_eq!(s.expose(), "t-very-secret");
    }
}
