-- The LoRA set and VAE a job needs (JobSpec::adapters_key), so that workers can prefer
-- jobs matching what they already hold, as they prefer their loaded model.
ALTER TABLE jobs ADD COLUMN adapters TEXT NOT NULL DEFAULT '';
