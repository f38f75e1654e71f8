-- The latest step preview of a running job (JSON {step, image}). Previews are live-only:
-- they are published on the bus but never appended to the events table; this one column
-- is all a late subscriber needs. A new attempt and a completion clear it.
ALTER TABLE jobs ADD COLUMN preview TEXT;
