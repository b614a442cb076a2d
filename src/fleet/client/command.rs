//! Commands as Redis reads them (an array of bulk strings), and Lua
//! scripts sent by their SHA-1 once Redis knows them.

/// One command: its name and arguments.
#[derive(Debug, Clone)]
pub struct Cmd {
    args: Vec<Vec<u8>>,
}

/// What can be an argument: bytes, text, numbers.
pub trait Arg {
    fn bytes(&self) -> Vec<u8>;
}

impl Arg for str {
    fn bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Arg for String {
    fn bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl Arg for [u8] {
    fn bytes(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl Arg for Vec<u8> {
    fn bytes(&self) -> Vec<u8> {
        self.clone()
    }
}

macro_rules! number_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn bytes(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }
        }
    )*};
}
number_arg!(u64, i64, usize, u32);

impl<T: Arg + ?Sized> Arg for &T {
    fn bytes(&self) -> Vec<u8> {
        (**self).bytes()
    }
}

impl Cmd {
    pub fn new(name: &str) -> Cmd {
        Cmd {
            args: vec![name.as_bytes().to_vec()],
        }
    }

    pub fn arg(mut self, arg: impl Arg) -> Cmd {
        self.args.push(arg.bytes());
        self
    }

    /// The command's name, for errors.
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.args[0]).unwrap_or("?")
    }

    /// Appends the command in RESP to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", self.args.len()).as_bytes());
        for arg in &self.args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A Lua script, run by `EVALSHA` and sent whole (`EVAL`) only when Redis
/// does not know it yet.
pub struct Script {
    body: &'static str,
    sha1: String,
}

impl Script {
    pub fn new(body: &'static str) -> Script {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body.as_bytes());
        let sha1 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Script { body, sha1 }
    }

    /// A call of the script with `keys`; arguments follow with [`ScriptCall::arg`].
    pub fn call(&self, keys: &[&str]) -> ScriptCall<'_> {
        let rest = keys
            .iter()
            .fold(Cmd::new("").arg(keys.len()), |cmd, key| cmd.arg(*key));
        ScriptCall { script: self, rest }
    }
}

/// A script with its keys and arguments, ready to send.
pub struct ScriptCall<'a> {
    script: &'a Script,
    /// The key count, keys and arguments (after an unused name).
    rest: Cmd,
}

impl ScriptCall<'_> {
    pub fn arg(mut self, arg: impl Arg) -> Self {
        self.rest = self.rest.arg(arg);
        self
    }

    /// The call by digest, and the call with the whole script.
    pub fn commands(&self) -> (Cmd, Cmd) {
        let with = |name: &str, what: &str| {
            let mut args = vec![name.as_bytes().to_vec(), what.as_bytes().to_vec()];
            args.extend(self.rest.args[1..].iter().cloned());
            Cmd { args }
        };
        (
            with("EVALSHA", &self.script.sha1),
            with("EVAL", self.script.body),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_as_redis_reads_it() {
        let mut out = Vec::new();
        Cmd::new("SET")
            .arg("k")
            .arg(&b"a\r\nb"[..])
            .arg(42u64)
            .encode(&mut out);
        assert_eq!(
            out,
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n$2\r\n42\r\n"
        );
    }

    #[test]
    fn scripts_go_by_their_sha1() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this digest.
        let script = Script::new("return 1");
        let (by_sha, whole) = script.call(&["k"]).arg(5u64).commands();
        let mut out = Vec::new();
        by_sha.encode(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("e0e1f9fabfc9d4800c877a703b823ac0578ff8db"),
            "{text}"
        );
        assert!(
            text.ends_with("$1\r\n1\r\n$1\r\nk\r\n$1\r\n5\r\n"),
            "{text}"
        );
        assert_eq!(whole.name(), "EVAL");
    }
}
