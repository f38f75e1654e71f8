-- Dynamic batching: what a job must share with others to run in one UNet batch with
-- them (JobSpec::batch_key); NULL for jobs that always run alone (img2img, inpainting,
-- and jobs queued before this column existed).
ALTER TABLE jobs ADD COLUMN batch_key TEXT;
CREATE INDEX jobs_batchable ON jobs (batch_key, priority DESC, created_at, id)
    WHERE status = 'queued' AND batch_key IS NOT NULL;
