-- Retention per key: finished jobs of a key with retain_days set are removed after that
-- many days, whatever the server's --retain-days says (NULL: the server's setting).
ALTER TABLE api_keys ADD COLUMN retain_days REAL;
