-- Every generation request, including the ones refused before they were queued.
CREATE TABLE requests (
    id              INTEGER PRIMARY KEY,
    created_at      REAL    NOT NULL,  -- unix seconds
    user_id         INTEGER NOT NULL,
    guild_id        INTEGER,           -- NULL in direct messages
    channel_id      INTEGER,
    command         TEXT    NOT NULL,  -- imagine | remix | inpaint
    prompt          TEXT    NOT NULL,  -- verbatim, as the user sent it
    negative        TEXT,
    parameters      TEXT    NOT NULL,  -- JSON: aspect, steps, guidance, strength, count
    seeds           TEXT,              -- JSON list, one per image
    image_count     INTEGER NOT NULL DEFAULT 0,
    status          TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'rejected')),
    reason          TEXT,              -- why it was rejected or failed, a short code
    error           TEXT,              -- the message the user saw
    queue_wait      REAL,              -- seconds
    generation_time REAL,              -- seconds
    finished_at     REAL
);

CREATE INDEX requests_by_guild_and_time ON requests (guild_id, created_at);
CREATE INDEX requests_by_user_and_time ON requests (user_id, created_at);
