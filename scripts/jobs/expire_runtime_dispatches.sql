-- For operators who prefer cron to the dispatch-worker's own expiry loop:
-- pending dispatches past their expiry become expired and drop their token.
UPDATE runtime_dispatches
SET status = 'expired',
    join_token_ciphertext = NULL,
    join_token_nonce = NULL,
    updated_at = now()
WHERE status = 'pending'
  AND expires_at < now();
