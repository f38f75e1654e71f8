//! Whose rows a lookup may see. Every store query that reads or changes a job or image on
//! behalf of a client takes a `Scope`, so ownership is enforced in SQL and no route can
//! forget it: a row of another owner is simply not found.

/// The rows a caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: admin keys, the local user when auth is off, and maintenance.
    All,
    /// Only rows whose `owner` is this string.
    Owner(String),
}

impl Scope {
    /// The owner to filter on, or `None` for no filter (bound as SQL NULL).
    pub fn owner(&self) -> Option<&str> {
        match self {
            Scope::All => None,
            Scope::Owner(owner) => Some(owner),
        }
    }
}
