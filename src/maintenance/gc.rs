//! The orphan collector: objects in the store that no row names. They appear when a
//! process dies between uploading a job's images and committing them, or between the
//! cleaner removing rows and deleting their objects.
//!
//! Only keys of sdq's own shapes are considered (`{job}/{image}.png`,
//! `{job}/{image}.thumb.jpg`, `inputs/{uuid}/{name}`), so a bucket shared with other
//! data loses nothing else; and only objects older than a grace period, because an
//! upload whose commit is still under way looks exactly like an orphan.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use super::MaintenanceError;
use crate::queue::JobStore;
use crate::storage::{ImageStore, ObjectInfo};

/// What one collection found.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// Objects listed.
    pub scanned: usize,
    /// Objects of sdq's shapes that no row names (deleted unless this was a dry run).
    pub orphans: Vec<ObjectInfo>,
    /// Objects left alone because their keys are not of sdq's shapes.
    pub foreign: usize,
    /// Orphans actually deleted.
    pub deleted: usize,
}

/// The key whose row keeps `key` alive: the image itself for a thumbnail, the key
/// otherwise; `None` for keys sdq never writes.
pub fn owning_key(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["inputs", id, name] if Uuid::parse_str(id).is_ok() && !name.is_empty() => {
            Some(key.to_string())
        }
        [job, file] if Uuid::parse_str(job).is_ok() => {
            let image = file
                .strip_suffix(".thumb.jpg")
                .or_else(|| file.strip_suffix(".png"))?;
            Uuid::parse_str(image).ok()?;
            Some(format!("{job}/{image}.png"))
        }
        _ => None,
    }
}

/// Lists the store, finds orphans older than `grace`, and deletes them unless `dry_run`.
pub async fn collect(
    store: &Arc<dyn JobStore>,
    images: &ImageStore,
    grace: Duration,
    dry_run: bool,
) -> Result<GcReport, MaintenanceError> {
    let cutoff = chrono::Utc::now().timestamp_millis() - grace.as_millis() as i64;
    let objects = images.list_objects("").await?;
    let mut report = GcReport {
        scanned: objects.len(),
        ..Default::default()
    };
    let mut candidates = Vec::new();
    for object in objects {
        match owning_key(&object.key) {
            None => report.foreign += 1,
            Some(owner) if object.modified_ms <= cutoff => candidates.push((owner, object)),
            Some(_) => {}
        }
    }
    let owners: Vec<String> = candidates
        .iter()
        .map(|(o, _)| o.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let alive = store.referenced_keys(&owners).await?;
    report.orphans = candidates
        .into_iter()
        .filter(|(owner, _)| !alive.contains(owner))
        .map(|(_, object)| object)
        .collect();
    if !dry_run {
        for orphan in &report.orphans {
            images.delete(&orphan.key).await?;
            report.deleted += 1;
        }
    }
    Ok(report)
}

/// Collects orphans every `interval` until `shutdown` turns true.
pub async fn run(
    store: Arc<dyn JobStore>,
    images: ImageStore,
    grace: Duration,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; a process that just started has nothing urgent.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match collect(&store, &images, grace, false).await {
            Ok(r) if r.deleted > 0 => {
                tracing::info!(
                    deleted = r.deleted,
                    scanned = r.scanned,
                    "orphaned objects collected"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "orphan collection failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sdq_shaped_keys_have_owners() {
        let job = Uuid::now_v7();
        let image = Uuid::now_v7();
        let png = format!("{job}/{image}.png");
        assert_eq!(owning_key(&png), Some(png.clone()));
        assert_eq!(
            owning_key(&format!("{job}/{image}.thumb.jpg")),
            Some(png.clone())
        );
        let input = format!("inputs/{image}/init");
        assert_eq!(owning_key(&input), Some(input.clone()));
        for foreign in [
            "backup.tar",
            "other/x.png",
            &format!("{job}/notes.txt"),
            &format!("{job}/{image}.png/x"),
            &format!("inputs/{image}"),
        ] {
            assert_eq!(owning_key(foreign), None, "{foreign}");
        }
    }
}
