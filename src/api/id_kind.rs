//! The three kinds of user id the API accepts as `user_id_type`.

use std::fmt;

/// The three kinds of user id the ACS API accepts as `user_id_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdKind {
    OpenId,
    UnionId,
    UserId,
}

impl IdKind {
    pub const ALL: [IdKind; 3] = [IdKind::OpenId, IdKind::UnionId, IdKind::UserId];

    /// The API's `user_id_type` value, which is also the directory name.
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::OpenId => "open_id",
            IdKind::UnionId => "union_id",
            IdKind::UserId => "user_id",
        }
    }

    /// Its place in [`IdKind::ALL`], for tables indexed by kind.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<IdKind> {
        IdKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
