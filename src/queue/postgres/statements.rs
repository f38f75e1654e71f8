//! The statements of the queue's hot path on PostgreSQL (enqueue, claim, progress,
//! completion), each one round trip: the job row's change, its event rows and its webhook
//! delivery are parts of one `WITH` statement.

use std::sync::LazyLock;

use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::{job_from_row, webhooks, JOB_COLUMNS, NOW};
use crate::queue::webhooks::WebhookEvent;
use crate::queue::{Event, EventKind, Job, NewJob, StoreError};

/// 1-based place in line of the queued job `j` (an alias of `jobs`): two counts that each
/// walk only the part of `jobs_claimable` that is ahead of it (higher priorities, then the
/// older jobs of its own), so they can be answered from the index alone.
fn place_in_line(j: &str) -> String {
    format!(
        "((SELECT COUNT(*) FROM jobs o WHERE o.status = 'queued' AND o.priority > {j}.priority) \
          + (SELECT COUNT(*) FROM jobs o WHERE o.status = 'queued' AND o.priority = {j}.priority \
               AND (o.created_at, o.id) < ({j}.created_at, {j}.id)) + 1)"
    )
}

pub(super) async fn position(conn: &mut PgConnection, id: Uuid) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT {} FROM jobs j WHERE j.id = $1 AND j.status = 'queued'",
        place_in_line("j")
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Inserts a queued job and its `queued` event (its place in line counted in the same
/// statement, over the jobs committed before it): one round trip.
static ENQUEUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH job AS ( \
           INSERT INTO jobs (id, owner, status, model, spec, priority, max_attempts, run_at, created_at, last_seq, adapters, \
                             webhook_url, webhook_events, batch_key) \
           VALUES ($1, $2, 'queued', $3, $4, $5, $6, {NOW}, {NOW}, 1, $7, $8, $9, $11) RETURNING {JOB_COLUMNS}), \
         place AS (SELECT {} AS position FROM job j), \
         event AS ( \
           INSERT INTO job_events (job_id, seq, body, created_at) \
           SELECT job.id, 1, jsonb_set($10, '{{position}}', to_jsonb(place.position)), {NOW} FROM job, place) \
         SELECT job.*, place.position FROM job, place",
        place_in_line("j")
    )
});

pub(super) async fn insert_job(
    conn: &mut PgConnection,
    id: Uuid,
    new: &NewJob,
) -> Result<(Job, Event), StoreError> {
    let row = sqlx::query(&ENQUEUE)
        .bind(id)
        .bind(&new.owner)
        .bind(&new.spec.model)
        .bind(Json(&new.spec))
        .bind(new.priority)
        .bind(new.max_attempts.max(1))
        .bind(new.spec.adapters_key())
        .bind(&new.spec.webhook_url)
        .bind(new.spec.webhook_mask())
        .bind(Json(EventKind::Queued { position: 0 }))
        .bind(new.spec.batch_key())
        .fetch_one(&mut *conn)
        .await?;
    let job = job_from_row(&row)?;
    let position: i64 = row.try_get("position")?;
    let event = Event {
        job_id: id,
        seq: 1,
        kind: EventKind::Queued { position },
    };
    Ok((job, event))
}

/// The job row a statement that recorded one event yields, as `webhooks::insert_from`
/// reads it.
const EVENT_JOB: &str = "(SELECT id, owner, webhook_url, webhook_events, last_seq AS seq FROM job)";

/// The id of the job a claim takes (`$4` the loaded model, `$5` the loaded adapters): the
/// top priority among claimable jobs, and within it the oldest of the first non-empty tier
/// of (model and adapters), (model), (adapters), (any). That is the order `priority DESC, model match
/// DESC, adapters match DESC, created_at, id`, but each tier is one `LIMIT 1` walk of an
/// index (see the `claim_indexes` migration) where sorting by match would read every
/// queued row. The tiers are evaluated lazily (`COALESCE` of init plans), so a worker
/// whose model has work stops at the first. Rows other claimers hold are skipped: if that
/// empties the top priority, the last term is the full order over what is left, the
/// exact answer for that rare moment.
static CLAIM_PICK: LazyLock<String> = LazyLock::new(|| {
    let claimable = format!("status = 'queued' AND run_at <= {NOW}");
    let top = format!(
        "(SELECT priority FROM jobs WHERE {claimable} ORDER BY priority DESC, created_at, id LIMIT 1)"
    );
    let tier = |matching: &str| {
        format!(
            "(SELECT id FROM jobs WHERE {claimable} AND priority = {top}{matching} \
              ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        )
    };
    format!(
        "COALESCE({}, {}, {}, {}, \
           (SELECT id FROM jobs WHERE {claimable} \
            ORDER BY priority DESC, (model = $4) IS TRUE DESC, (adapters = $5) IS TRUE DESC, created_at, id \
            LIMIT 1 FOR UPDATE SKIP LOCKED))",
        tier(" AND model = $4 AND adapters = $5"),
        tier(" AND model = $4"),
        tier(" AND adapters = $5"),
        tier(""),
    )
});

/// Claims the job `CLAIM_PICK` chooses and records its `started` event (the attempt
/// filled in from the row) and the webhook delivery, in one round trip.
pub(super) static CLAIM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH job AS ( \
           UPDATE jobs SET status = 'running', attempt = attempt + 1, lease_token = $1, \
                  lease_expires_at = {NOW} + $2, worker = $3, started_at = {NOW}, \
                  progress_step = 0, progress_total = 0, last_seq = last_seq + 1, preview = NULL \
           WHERE id = {} \
           RETURNING {JOB_COLUMNS}, webhook_url, webhook_events), \
         event AS ( \
           INSERT INTO job_events (job_id, seq, body, created_at) \
           SELECT id, last_seq, jsonb_set($6, '{{attempt}}', to_jsonb(attempt)), {NOW} FROM job), \
         delivery AS ({}) \
         SELECT {JOB_COLUMNS} FROM job",
        *CLAIM_PICK,
        webhooks::insert_from(EVENT_JOB, WebhookEvent::Started, "$7"),
    )
});

/// Marks a job we hold succeeded, inserts its image rows and its `image` … `succeeded`
/// events (`$4` of them, the last taking the job's new `last_seq`) and the webhook
/// delivery, in one round trip.
pub(super) static COMPLETE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH job AS ( \
           UPDATE jobs SET status = 'succeeded', finished_at = {NOW}, timings = $1, lease_token = NULL, \
                  lease_expires_at = NULL, progress_step = progress_total, error = NULL, preview = NULL, \
                  last_seq = last_seq + $4 \
           WHERE id = $2 AND lease_token = $3 AND status = 'running' \
           RETURNING id, owner, model, spec->>'prompt' AS prompt, last_seq, webhook_url, webhook_events), \
         image AS ( \
           INSERT INTO images (id, job_id, owner, model, prompt, idx, object_key, seed, width, height, bytes, created_at) \
           SELECT i.id, job.id, job.owner, job.model, COALESCE(job.prompt, ''), i.idx, i.object_key, i.seed, \
                  i.width, i.height, i.bytes, {NOW} \
           FROM job, unnest($5::uuid[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], \
                            $11::bigint[]) AS i(id, idx, object_key, seed, width, height, bytes)), \
         event AS ( \
           INSERT INTO job_events (job_id, seq, body, created_at) \
           SELECT job.id, job.last_seq - $4 + e.n, e.body, {NOW} \
           FROM job, unnest($12::jsonb[]) WITH ORDINALITY AS e(body, n)), \
         delivery AS ({}) \
         SELECT last_seq FROM job",
        webhooks::insert_from(EVENT_JOB, WebhookEvent::Completed, "$13"),
    )
});

/// `COMPLETE` for several jobs at once: `$1`…`$5` one element per job (id, token,
/// timings, event count, delivery id), numbered by `WITH ORDINALITY`; the image rows
/// (`$6`…`$13`) and event bodies (`$14`…`$16`) name their job by that number. A job whose
/// fence fails yields no row, and so none of its images, events or delivery.
pub(super) static COMPLETE_MANY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS ( \
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::jsonb[], $4::bigint[], $5::uuid[]) \
             WITH ORDINALITY AS b(bid, btoken, btimings, bcount, bdelivery, k)), \
         job AS ( \
           UPDATE jobs SET status = 'succeeded', finished_at = {NOW}, timings = input.btimings, \
                  lease_token = NULL, lease_expires_at = NULL, progress_step = progress_total, \
                  error = NULL, preview = NULL, last_seq = last_seq + input.bcount \
           FROM input \
           WHERE jobs.id = input.bid AND jobs.lease_token = input.btoken AND jobs.status = 'running' \
           RETURNING jobs.id, jobs.owner, jobs.model, jobs.spec->>'prompt' AS prompt, jobs.last_seq, \
                     jobs.webhook_url, jobs.webhook_events, input.k, input.bcount, input.bdelivery), \
         image AS ( \
           INSERT INTO images (id, job_id, owner, model, prompt, idx, object_key, seed, width, height, bytes, created_at) \
           SELECT i.id, job.id, job.owner, job.model, COALESCE(job.prompt, ''), i.idx, i.object_key, i.seed, \
                  i.width, i.height, i.bytes, {NOW} \
           FROM unnest($6::bigint[], $7::uuid[], $8::bigint[], $9::text[], $10::bigint[], $11::bigint[], \
                       $12::bigint[], $13::bigint[]) AS i(k, id, idx, object_key, seed, width, height, bytes) \
           JOIN job ON job.k = i.k), \
         event AS ( \
           INSERT INTO job_events (job_id, seq, body, created_at) \
           SELECT job.id, job.last_seq - job.bcount + e.n, e.body, {NOW} \
           FROM unnest($14::bigint[], $15::bigint[], $16::jsonb[]) AS e(k, n, body) JOIN job ON job.k = e.k), \
         delivery AS ({}) \
         SELECT k, last_seq FROM job",
        webhooks::insert_from(
            "(SELECT id, owner, webhook_url, webhook_events, last_seq AS seq, bdelivery FROM job)",
            WebhookEvent::Completed,
            "s.bdelivery"
        ),
    )
});

/// Appends a non-terminal event of a job we hold (`$3`/`$4` its progress step and total,
/// if it is progress): fence, next `seq`, progress, the event and its webhook delivery in
/// one round trip.
pub(super) fn record_sql(webhook: Option<WebhookEvent>) -> String {
    let delivery = webhook
        .map(|kind| {
            format!(
                ", delivery AS ({})",
                webhooks::insert_from(EVENT_JOB, kind, "$6")
            )
        })
        .unwrap_or_default();
    format!(
        "WITH job AS ( \
           UPDATE jobs SET last_seq = last_seq + 1, \
                  progress_step = COALESCE($3, progress_step), \
                  progress_total = COALESCE($4, progress_total) \
           WHERE id = $1 AND lease_token = $2 AND status = 'running' \
           RETURNING id, owner, webhook_url, webhook_events, last_seq), \
         event AS ( \
           INSERT INTO job_events (job_id, seq, body, created_at) \
           SELECT id, last_seq, $5, {NOW} FROM job){delivery} \
         SELECT last_seq FROM job"
    )
}
