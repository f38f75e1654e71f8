//! One conformance suite for every `JobStore` backend: a backend passes it or is not done.
//!
//! Each check takes a fresh, empty store. The `backend!` macro at the bottom runs every
//! check against each implementation.

#[path = "jobstore_conformance/claims.rs"]
mod claims;
mod common;
use claims::*;
#[path = "jobstore_conformance/lifecycle.rs"]
mod lifecycle;
use lifecycle::*;
#[path = "jobstore_conformance/retention.rs"]
mod retention;
use retention::*;
#[path = "jobstore_conformance/owners.rs"]
mod owners;
use owners::*;
#[path = "jobstore_conformance/webhooks.rs"]
mod webhook_checks;
use webhook_checks::*;
#[path = "jobstore_conformance/batch.rs"]
mod batch_checks;
use batch_checks::*;
#[path = "jobstore_conformance/complete_many.rs"]
mod complete_many_checks;
use complete_many_checks::*;

use std::sync::Arc;
use std::time::Duration;

use sdq::queue::{
    CancelOutcome, Cursor, Enqueued, EventKind, Idempotency, ImageQuery, JobSpec, JobStatus,
    JobStore, ListQuery, NewApiKey, NewImage, NewJob, PreviewImage, Scope, StoreError,
};
use serde_json::json;
use uuid::Uuid;

type Store = Arc<dyn JobStore>;

fn spec(model: &str, prompt: &str) -> JobSpec {
    JobSpec {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        model: model.into(),
        width: 64,
        height: 64,
        steps: 4,
        guidance_scale: 7.5,
        seed: 1,
        scheduler: "euler-a".into(),
        num_images: 1,
        long_prompt: "chunk".into(),
        ..Default::default()
    }
}

async fn enqueue(
    store: &Store,
    model: &str,
    prompt: &str,
    priority: i32,
    max_attempts: i32,
) -> Uuid {
    let Enqueued::New(job, event) = store
        .enqueue(NewJob::local(spec(model, prompt), priority, max_attempts))
        .await
        .unwrap()
    else {
        panic!("a job without an idempotency key is always new")
    };
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(event.seq, 1);
    assert!(matches!(event.kind, EventKind::Queued { .. }));
    job.id
}

const LEASE: Duration = Duration::from_secs(30);

macro_rules! backend {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;
            macro_rules! check {
                ($check:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let (store, _guard) = $open;
                        super::$check(store).await;
                    }
                };
            }
            check!(claim_order_is_priority_then_age);
            check!(claim_prefers_the_loaded_model_within_a_priority);
            check!(claim_prefers_the_loaded_model_then_its_loras);
            check!(claim_follows_the_full_preference_order);
            check!(claim_sets_lease_attempt_and_started_event);
            check!(concurrent_claims_never_share_a_job);
            check!(writes_are_fenced_by_the_lease_token);
            check!(completion_records_images_and_gap_free_events);
            check!(transient_failures_retry_with_backoff_then_fail);
            check!(permanent_failures_fail_at_once);
            check!(expired_leases_are_rescued);
            check!(cancel_semantics);
            check!(release_returns_a_job_without_counting_the_attempt);
            check!(listing_is_newest_first_with_a_cursor);
            check!(counts_by_status_follow_the_jobs);
            check!(owner_default_models_are_per_owner);
            check!(retention_purges_only_old_finished_jobs);
            check!(retention_follows_each_keys_own_limit);
            check!(compaction_drops_progress_of_finished_jobs);
            check!(referenced_keys_are_image_rows_and_inputs);
            check!(backup_copies_the_database_or_names_the_tool);
            check!(owners_see_only_their_own);
            check!(quotas_count_unfinished_jobs_per_owner_even_under_races);
            check!(idempotency_keys_return_the_first_job);
            check!(keys_are_stored_hashed_and_can_be_revoked);
            check!(rate_buckets_hold_across_concurrent_takers);
            check!(gallery_pages_stay_correct_across_deletes);
            check!(webhook_deliveries_are_made_with_their_events);
            check!(completed_means_every_end_but_a_retried_failure);
            check!(progress_deliveries_are_coalesced);
            check!(deliveries_are_claimed_once_and_finished_by_their_attempt);
            check!(previews_keep_only_the_latest_and_stay_out_of_the_log);
            check!(batch_claims_take_compatible_jobs_in_priority_order);
            check!(batch_claims_need_a_held_batchable_lead);
            check!(batch_claims_never_share_a_job_with_other_workers);
            check!(batched_completion_matches_one_by_one);
            check!(batched_completion_fences_each_job);
            check!(batched_completion_is_all_or_nothing_on_error);
        }
    };
}

async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = sdq::queue::sqlite::SqliteStore::open(&url).await.unwrap();
    (Arc::new(store), dir)
}

async fn postgres_store() -> (Store, common::services::PgDatabase) {
    let db = common::services::PgDatabase::create().await;
    let store = sdq::queue::postgres::PgStore::open(&db.url).await.unwrap();
    (Arc::new(store), db)
}

backend!(sqlite, sqlite_store().await);
backend!(postgres, postgres_store().await);
