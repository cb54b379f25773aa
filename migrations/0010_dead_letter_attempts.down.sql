-- Back to 0005's `attempts > 0`. Letters with no attempt are kept as one attempt rather
-- than failing the rollback (the attempt count is informational).
UPDATE dead_letters SET attempts = 1 WHERE attempts = 0;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_attempts_check;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_attempts_check CHECK (attempts > 0);
