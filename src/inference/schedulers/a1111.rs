//! A1111's sampler and schedule names, mapped onto our schedulers.
//!
//! Since A1111 1.9 a sampler ("DPM++ 2M") and a schedule type ("Karras") are chosen
//! separately, and `automatic` means the sampler's own default schedule; older clients send
//! combined names ("DPM++ 2M Karras"). Both forms land on the same [`SchedulerKind`].
//! Only combinations whose math we implement are accepted: anything else is an error that
//! names what was asked for, never a silent substitute.

use super::SchedulerKind;

/// One A1111 sampler we can run.
#[derive(Debug, Clone, Copy)]
pub struct A1111Sampler {
    /// The name A1111 lists and writes into infotexts.
    pub name: &'static str,
    /// The short names A1111 also accepts (`k_euler_a`, ...).
    pub aliases: &'static [&'static str],
    /// What `automatic` means for this sampler (`options.scheduler` in `/samplers`).
    pub default_schedule: Option<&'static str>,
    /// Old-style combined names are accepted but not listed.
    pub listed: bool,
    automatic: SchedulerKind,
    karras: Option<SchedulerKind>,
    uniform: Option<SchedulerKind>,
}

const fn sampler(
    name: &'static str,
    aliases: &'static [&'static str],
    default_schedule: Option<&'static str>,
    automatic: SchedulerKind,
    karras: Option<SchedulerKind>,
    uniform: Option<SchedulerKind>,
) -> A1111Sampler {
    A1111Sampler {
        name,
        aliases,
        default_schedule,
        listed: true,
        automatic,
        karras,
        uniform,
    }
}

const fn legacy(mut s: A1111Sampler) -> A1111Sampler {
    s.listed = false;
    s
}

use SchedulerKind as K;

/// Every A1111 sampler sdq runs, in A1111's listing order.
pub const A1111_SAMPLERS: &[A1111Sampler] = &[
    sampler(
        "DPM++ 2M",
        &["k_dpmpp_2m"],
        Some("karras"),
        K::DpmPp2mKarras,
        Some(K::DpmPp2mKarras),
        Some(K::DpmPp2m),
    ),
    // A1111's automatic schedule for this sampler is "exponential", which sdq does not
    // have; ours is Karras, and `/samplers` says so.
    sampler(
        "DPM++ 2M SDE",
        &["k_dpmpp_2m_sde"],
        Some("karras"),
        K::DpmPp2mSdeKarras,
        Some(K::DpmPp2mSdeKarras),
        None,
    ),
    sampler(
        "Euler a",
        &["k_euler_a", "k_euler_ancestral"],
        None,
        K::EulerAncestral,
        None,
        Some(K::EulerAncestral),
    ),
    sampler("Euler", &["k_euler"], None, K::Euler, None, Some(K::Euler)),
    sampler("Heun", &["k_heun"], None, K::Heun, None, Some(K::Heun)),
    sampler("DDIM", &["ddim"], None, K::Ddim, None, Some(K::Ddim)),
    sampler("PLMS", &["plms"], None, K::Pndm, None, Some(K::Pndm)),
    sampler("UniPC", &["unipc"], None, K::UniPc, None, Some(K::UniPc)),
    sampler("LCM", &["k_lcm"], None, K::Lcm, None, Some(K::Lcm)),
    legacy(sampler(
        "DPM++ 2M Karras",
        &["k_dpmpp_2m_ka"],
        Some("karras"),
        K::DpmPp2mKarras,
        Some(K::DpmPp2mKarras),
        None,
    )),
    legacy(sampler(
        "DPM++ 2M SDE Karras",
        &["k_dpmpp_2m_sde_ka"],
        Some("karras"),
        K::DpmPp2mSdeKarras,
        Some(K::DpmPp2mSdeKarras),
        None,
    )),
];

/// The schedule types sdq knows, as `(name, label)`: what `/sdapi/v1/schedulers` lists.
pub const A1111_SCHEDULES: &[(&str, &str)] = &[
    ("automatic", "Automatic"),
    ("uniform", "Uniform"),
    ("karras", "Karras"),
];

/// Why an A1111 sampler / schedule pair cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum A1111NameError {
    #[error("unknown sampler '{0}'; available: {names}", names = listed_names())]
    UnknownSampler(String),
    #[error(
        "sampler '{sampler}' cannot run with schedule type '{schedule}' in sdq; use {allowed}"
    )]
    UnsupportedSchedule {
        sampler: String,
        schedule: String,
        allowed: String,
    },
}

fn listed_names() -> String {
    A1111_SAMPLERS
        .iter()
        .filter(|s| s.listed)
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl A1111Sampler {
    fn matches(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name) || self.aliases.contains(&name)
    }

    fn schedules(&self) -> Vec<&'static str> {
        let mut out = vec!["automatic"];
        if self.uniform.is_some() {
            out.push("uniform");
        }
        if self.karras.is_some() {
            out.push("karras");
        }
        out
    }
}

/// Maps an A1111 sampler name (or one of ours, e.g. `euler-a`) and schedule type
/// (`None`, empty or `automatic` for the sampler's default; case-insensitive) onto ours.
pub fn from_a1111(sampler: &str, schedule: Option<&str>) -> Result<SchedulerKind, A1111NameError> {
    let schedule = schedule.map(str::trim).filter(|s| !s.is_empty());
    let schedule_lower = schedule.map(str::to_ascii_lowercase);
    let Some(entry) = A1111_SAMPLERS.iter().find(|s| s.matches(sampler.trim())) else {
        // Our own names are fine too; they fix their schedule themselves.
        return match SchedulerKind::parse(sampler.trim()) {
            Some(kind) if matches!(schedule_lower.as_deref(), None | Some("automatic")) => Ok(kind),
            Some(_) => Err(A1111NameError::UnsupportedSchedule {
                sampler: sampler.to_string(),
                schedule: schedule.unwrap_or_default().to_string(),
                allowed: "automatic".into(),
            }),
            None => Err(A1111NameError::UnknownSampler(sampler.to_string())),
        };
    };
    let kind = match schedule_lower.as_deref() {
        None | Some("automatic") => Some(entry.automatic),
        Some("karras") => entry.karras,
        Some("uniform") => entry.uniform,
        Some(_) => None,
    };
    kind.ok_or_else(|| A1111NameError::UnsupportedSchedule {
        sampler: entry.name.to_string(),
        schedule: schedule.unwrap_or_default().to_string(),
        allowed: entry.schedules().join(", "),
    })
}

/// The A1111 sampler and schedule label that name one of our schedulers, e.g.
/// `dpmpp-2m-karras` → ("DPM++ 2M", "Karras").
pub fn to_a1111(kind: SchedulerKind) -> (&'static str, &'static str) {
    for s in A1111_SAMPLERS.iter().filter(|s| s.listed) {
        if s.automatic == kind && s.default_schedule.is_none() {
            return (s.name, "Automatic");
        }
        if s.karras == Some(kind) {
            return (s.name, "Karras");
        }
        if s.uniform == Some(kind) {
            return (s.name, "Uniform");
        }
    }
    (kind.a1111_name(), "Automatic")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_schedules_map_onto_our_schedulers() {
        let ok = [
            ("Euler a", None, K::EulerAncestral),
            ("Euler a", Some("Automatic"), K::EulerAncestral),
            ("euler a", Some("uniform"), K::EulerAncestral),
            ("k_euler_a", None, K::EulerAncestral),
            ("Euler", Some(""), K::Euler),
            ("DDIM", Some("automatic"), K::Ddim),
            ("PLMS", None, K::Pndm),
            ("Heun", None, K::Heun),
            ("UniPC", None, K::UniPc),
            ("LCM", None, K::Lcm),
            ("DPM++ 2M", Some("automatic"), K::DpmPp2mKarras),
            ("DPM++ 2M", Some("Karras"), K::DpmPp2mKarras),
            ("DPM++ 2M", Some("uniform"), K::DpmPp2m),
            ("DPM++ 2M SDE", Some("karras"), K::DpmPp2mSdeKarras),
            ("DPM++ 2M SDE", None, K::DpmPp2mSdeKarras),
            ("DPM++ 2M Karras", None, K::DpmPp2mKarras),
            ("DPM++ 2M SDE Karras", Some("Karras"), K::DpmPp2mSdeKarras),
            ("euler-a", Some("automatic"), K::EulerAncestral),
            ("dpmpp-2m", None, K::DpmPp2m),
        ];
        for (name, schedule, want) in ok {
            assert_eq!(from_a1111(name, schedule), Ok(want), "{name} {schedule:?}");
        }
        let bad = [
            ("Euler", Some("karras")),
            ("Euler a", Some("exponential")),
            ("DPM++ 2M SDE", Some("uniform")),
            ("euler-a", Some("karras")),
            ("DPM++ SDE", None),
            ("LMS", None),
            ("nope", None),
        ];
        for (name, schedule) in bad {
            assert!(from_a1111(name, schedule).is_err(), "{name} {schedule:?}");
        }
        let err = from_a1111("Euler", Some("Karras")).unwrap_err().to_string();
        assert!(err.contains("automatic, uniform"), "{err}");
        assert!(from_a1111("LMS", None)
            .unwrap_err()
            .to_string()
            .contains("Euler a"));
    }

    #[test]
    fn every_scheduler_has_an_a1111_name_that_maps_back() {
        for kind in SchedulerKind::ALL {
            let (sampler, schedule) = to_a1111(kind);
            assert_eq!(from_a1111(sampler, Some(schedule)), Ok(kind), "{kind:?}");
        }
        assert_eq!(to_a1111(K::DpmPp2mKarras), ("DPM++ 2M", "Karras"));
        assert_eq!(to_a1111(K::EulerAncestral), ("Euler a", "Automatic"));
    }
}
