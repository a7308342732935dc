-- Per-guild settings, one JSON document per guild: missing keys take the defaults from the environment.
CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    settings TEXT    NOT NULL
);
