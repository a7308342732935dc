-- What a queued request needs to run again after a crash and reach its author: the inputs that are not in the
-- requests row and the interaction's token. Deleted once the job is delivered (or has failed and said so).
CREATE TABLE pending_jobs (
    request_id             INTEGER PRIMARY KEY REFERENCES requests (id) ON DELETE CASCADE,
    requester_name         TEXT    NOT NULL,
    application_id         INTEGER NOT NULL,
    interaction_token      TEXT    NOT NULL,
    interaction_created_at REAL    NOT NULL,  -- unix seconds; the token works for 15 minutes
    response_message_id    INTEGER,           -- the status message the result replaces
    init_image             BLOB,              -- PNG, already fitted to its size bucket
    mask                   BLOB               -- PNG
);
