-- What media administration and thumbnail pre-generation need. The SQLite twin is
-- migrations/sqlite/0022_media_lifecycle.sql: keep them in step.

-- When media was last served (downloads and thumbnails, updated at most hourly): deletion by
-- age and the remote media cache purge go by it, as Synapse's do.
ALTER TABLE media ADD COLUMN last_access_ts BIGINT;
UPDATE media SET last_access_ts = COALESCE(uploaded_ts, created_ts);
CREATE INDEX media_last_access ON media (last_access_ts);
ALTER TABLE remote_media ADD COLUMN last_access_ts BIGINT;
UPDATE remote_media SET last_access_ts = fetched_ts;
CREATE INDEX remote_media_last_access ON remote_media (last_access_ts);
-- Cached thumbnails too: an origin may have given thumbnails of media never fetched whole.
ALTER TABLE remote_media_thumbnails ADD COLUMN last_access_ts BIGINT;
UPDATE remote_media_thumbnails SET last_access_ts = CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT);
CREATE INDEX remote_media_thumbnails_last_access ON remote_media_thumbnails (last_access_ts);

-- 1 while the configured thumbnail sizes of an uploaded image are still to be made: set with
-- the upload, cleared once they are; uploads whose generation was cut short (a crash) are
-- picked up again by the media housekeeping.
ALTER TABLE media ADD COLUMN thumbnails_pending BIGINT NOT NULL DEFAULT 0;
CREATE INDEX media_thumbnails_pending ON media (thumbnails_pending, uploaded_ts);
