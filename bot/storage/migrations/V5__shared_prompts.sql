-- Prompts members shared with their server, with a small thumbnail: Discord's attachment URLs are signed and
-- expire, so the gallery keeps its own copy of the picture.
CREATE TABLE shared_prompts (
    id                 INTEGER PRIMARY KEY,
    guild_id           INTEGER NOT NULL,
    author_id          INTEGER NOT NULL,
    author_name        TEXT    NOT NULL,
    created_at         REAL    NOT NULL,
    prompt             TEXT    NOT NULL,
    negative           TEXT,
    parameters         TEXT    NOT NULL,  -- JSON: aspect, steps, guidance
    seed               INTEGER NOT NULL,
    thumbnail          BLOB    NOT NULL,  -- JPEG
    gallery_channel_id INTEGER,           -- where it was posted, if the server has a gallery
    gallery_message_id INTEGER,
    likes              INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX shared_prompts_new ON shared_prompts (guild_id, created_at);
CREATE INDEX shared_prompts_top ON shared_prompts (guild_id, likes, created_at);
CREATE INDEX shared_prompts_by_author ON shared_prompts (guild_id, author_id, created_at);

CREATE TABLE prompt_likes (
    prompt_id INTEGER NOT NULL REFERENCES shared_prompts (id) ON DELETE CASCADE,
    user_id   INTEGER NOT NULL,
    PRIMARY KEY (prompt_id, user_id)
);
