-- Media of other servers, fetched over federation and cached here (bytes in the same
-- content-addressed store as local media). The SQLite twin is migrations/sqlite/0016_remote_media.sql.

-- One row per fetched mxc://server_name/media_id.
CREATE TABLE remote_media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT,
    file_name TEXT,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX remote_media_sha256 ON remote_media (sha256);

-- Thumbnails of remote media at the snapped sizes: fetched from the origin, or made here
-- from the cached original when the origin gave none.
CREATE TABLE remote_media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
CREATE INDEX remote_media_thumbnails_sha256 ON remote_media_thumbnails (sha256);
