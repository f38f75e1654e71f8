-- The cleaner finds finished jobs by age (retention, event-log compaction), and the
-- orphan collector asks whether an object key still has its image row.
ALTER TABLE jobs ADD COLUMN events_compacted BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE status IN ('succeeded', 'failed', 'canceled');
CREATE INDEX images_object_key ON images (object_key);
