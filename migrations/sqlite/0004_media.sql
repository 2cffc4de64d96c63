-- Content repository: local media, their cached thumbnails, and cached URL previews.
-- The PostgreSQL twin is migrations/postgres/0004_media.sql: keep them in step.
-- File bytes live on disk under data_dir/media, named by SHA-256 (hex), one copy per content.

-- One row per local mxc://server/media_id. sha256 and size stay NULL between
-- POST /_matrix/media/v1/create and the upload (PUT) of the content.
CREATE TABLE media (
    media_id TEXT PRIMARY KEY,
    uploader TEXT NOT NULL,
    sha256 TEXT,
    size BIGINT,
    content_type TEXT,
    file_name TEXT,
    created_ts BIGINT NOT NULL,
    uploaded_ts BIGINT,
    -- Until when a created media ID may still receive its upload.
    unused_expires_ts BIGINT,
    quarantined BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX media_uploader ON media (uploader, created_ts);
CREATE INDEX media_sha256 ON media (sha256);

-- Thumbnails generated on first request, at the snapped sizes.
CREATE TABLE media_thumbnails (
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    PRIMARY KEY (media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);

-- The last preview of each URL (OpenGraph JSON), reused until it expires.
CREATE TABLE url_previews (
    url TEXT PRIMARY KEY,
    og_json TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL
);
