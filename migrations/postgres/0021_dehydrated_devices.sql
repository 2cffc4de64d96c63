-- Dehydrated devices (MSC3814): at most one per user, a device (in `devices`, with keys)
-- that no client holds, whose to-device messages a new login fetches after decrypting
-- `device_data` (opaque to the server, a JSON object). The other database's twin file has
-- the same number: keep them in step.
CREATE TABLE dehydrated_devices (
    user_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
