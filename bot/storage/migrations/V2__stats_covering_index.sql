-- /stats reads only these columns of a guild's recent rows: with all of them in the index, SQLite answers from
-- the index alone instead of fetching each row from the table (measured by bench/storage.py).
DROP INDEX requests_by_guild_and_time;
CREATE INDEX requests_for_stats
    ON requests (guild_id, created_at, status, image_count, user_id, queue_wait, generation_time, reason);
