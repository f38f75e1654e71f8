//! `sdq bench`: side-by-side timings printed as ratios, one file per benchmark.
//!
//! These machines are noisy, so the two sides of a comparison run interleaved
//! (A, B, A, B, ...) on the same inputs and the report compares medians: a slow spell
//! hits both alike. Every benchmark returns [`Row`]s; [`print_report`] prints them as a
//! table (for people) and as JSON lines (for scripts and for diffing two runs: a
//! regression is a `speedup` that fell).

pub mod batch;
pub mod e2e;
pub mod kernels;
pub mod load;
pub mod lora_switch;
pub mod queue;
pub mod sse;
pub mod submit;
pub mod unet;
pub mod vae;

use std::time::{Duration, Instant};

use serde::Serialize;

/// One measured case: ours, and the baseline it ran beside.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Which benchmark (`unet`, `vae`, `e2e`, `kernels`, `queue`, `submit`, `sse`, `batch`).
    pub bench: String,
    /// What was measured, e.g. `512x512 CFG batch 2`.
    pub case: String,
    /// Median milliseconds of ours.
    pub ours_ms: f64,
    /// What ours ran against, if anything.
    pub baseline: Option<String>,
    /// Median milliseconds of the baseline.
    pub baseline_ms: Option<f64>,
    /// baseline / ours: above 1, ours is faster.
    pub speedup: Option<f64>,
    /// Timed runs of each side.
    pub iterations: usize,
    /// The process's peak resident memory so far, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Further figures of the case (load seconds, per-step milliseconds, ...).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, f64)>,
}

impl Row {
    /// A row for `ours` alone or against a named baseline.
    pub fn new(
        bench: &str,
        case: impl Into<String>,
        ours: &[Duration],
        baseline: Option<(&str, &[Duration])>,
    ) -> Self {
        let ours_ms = ms(median(ours));
        let (name, baseline_ms) = match baseline {
            Some((name, times)) => (Some(name.to_string()), Some(ms(median(times)))),
            None => (None, None),
        };
        Row {
            bench: bench.into(),
            case: case.into(),
            ours_ms,
            speedup: baseline_ms.map(|b| b / ours_ms.max(1e-9)),
            baseline: name,
            baseline_ms,
            iterations: ours.len(),
            peak_rss_mib: peak_rss_mib(),
            extra: Vec::new(),
        }
    }

    /// Adds a named figure.
    pub fn with(mut self, name: &str, value: f64) -> Self {
        self.extra.push((name.into(), value));
        self
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median (upper middle for even counts); zero for no samples.
pub fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Times `a` and `b` alternately, `iterations` times each, after one untimed warm-up of
/// each (allocations, caches). Returns both sides' samples.
pub fn interleaved<E>(
    iterations: usize,
    mut a: impl FnMut(usize) -> Result<(), E>,
    mut b: Option<&mut dyn FnMut(usize) -> Result<(), E>>,
) -> Result<(Vec<Duration>, Vec<Duration>), E> {
    a(0)?;
    if let Some(b) = b.as_mut() {
        b(0)?;
    }
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for i in 0..iterations.max(1) {
        let start = Instant::now();
        a(i + 1)?;
        ta.push(start.elapsed());
        if let Some(b) = b.as_mut() {
            let start = Instant::now();
            b(i + 1)?;
            tb.push(start.elapsed());
        }
    }
    Ok((ta, tb))
}

/// Peak resident set size of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The rows as an aligned table, then one JSON object per row.
pub fn format_report(rows: &[Row]) -> String {
    let header = [
        "bench", "case", "ours ms", "baseline", "base ms", "speedup", "peak RSS",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.bench.clone(),
                r.case.clone(),
                format!("{:.1}", r.ours_ms),
                r.baseline.clone().unwrap_or_else(|| "-".into()),
                r.baseline_ms.map_or("-".into(), |v| format!("{v:.1}")),
                r.speedup.map_or("-".into(), |v| format!("{v:.2}x")),
                r.peak_rss_mib
                    .map_or("-".into(), |v| format!("{:.2} GiB", v / 1024.0)),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |c: &[String]| -> String {
        c.iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, w))| {
                if i < 2 || i == 3 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c));
        out.push('\n');
    }
    for r in rows {
        out.push_str(&serde_json::to_string(r).expect("rows serialise"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_a_table_and_json_lines() {
        let ours = [
            Duration::from_millis(10),
            Duration::from_millis(30),
            Duration::from_millis(20),
        ];
        let theirs = [Duration::from_millis(40); 3];
        let rows = vec![
            Row::new(
                "unet",
                "64x64",
                &ours,
                Some(("candle-transformers", &theirs)),
            ),
            Row::new("e2e", "tiny", &ours, None).with("load_s", 0.5),
        ];
        assert_eq!(rows[0].ours_ms, 20.0);
        assert_eq!(rows[0].speedup, Some(2.0));
        let text = format_report(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("bench") && lines[1].contains("2.00x"));
        let json: serde_json::Value = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(json["bench"], "unet");
        assert_eq!(json["speedup"], 2.0);
        let e2e: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
        assert_eq!(e2e["extra"][0][0], "load_s");
    }

    #[test]
    fn interleaving_alternates_after_a_warm_up() {
        let log = std::cell::RefCell::new(Vec::new());
        let mut b = |i: usize| -> Result<(), ()> {
            log.borrow_mut().push(('b', i));
            Ok(())
        };
        let (ta, tb) = interleaved(
            2,
            |i| {
                log.borrow_mut().push(('a', i));
                Ok(())
            },
            Some(&mut b),
        )
        .unwrap();
        assert_eq!((ta.len(), tb.len()), (2, 2));
        assert_eq!(
            *log.borrow(),
            vec![('a', 0), ('b', 0), ('a', 1), ('b', 1), ('a', 2), ('b', 2)]
        );
    }
}
