//! Job states and the transitions between them, and nothing else.
//!
//! `queued → running → succeeded | failed | canceled`, `running → queued` on a retry or a
//! rescued lease, and `queued → canceled`. Every store statement that moves a job checks
//! the state it expects, so the table below is also what the SQL enforces.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
    ];

    /// The name stored in the database and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Canceled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// A job in a terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }

    /// Whether a job may move from `self` to `to`.
    pub fn can_become(self, to: Self) -> bool {
        use JobStatus::*;
        matches!(
            (self, to),
            (Queued, Running)
                | (Queued, Canceled)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
                | (Running, Queued)
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled] {
            for to in [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded] {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
        assert!(JobStatus::Running.can_become(JobStatus::Queued));
        assert!(!JobStatus::Queued.can_become(JobStatus::Succeeded));
        assert_eq!(JobStatus::parse("running"), Some(JobStatus::Running));
    }
}
