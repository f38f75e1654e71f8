-- The claim takes the best queued job of the top priority in tiers (same model and
-- LoRA set / VAE, then same model, then same LoRA set / VAE, then the oldest), each
-- tier one LIMIT 1 walk of one of these indexes, so a claim costs the same with a
-- thousand jobs queued or a hundred thousand. `jobs_claimable` gains `id` (the last
-- tie-break), so the last tier and the count of jobs ahead read the index alone.
DROP INDEX jobs_claimable;
CREATE INDEX jobs_claimable ON jobs (priority DESC, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_claim_model ON jobs (priority, model, created_at, id) WHERE status = 'queued';
CREATE INDEX jobs_claim_model_adapters ON jobs (priority, model, adapters, created_at, id)
    WHERE status = 'queued';
CREATE INDEX jobs_claim_adapters ON jobs (priority, adapters, created_at, id) WHERE status = 'queued';
