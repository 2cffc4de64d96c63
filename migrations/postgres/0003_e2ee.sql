-- End-to-end encryption: device and cross-signing keys, one-time and fallback keys,
-- device-list changes, to-device messages, server-side key backups.
-- The SQLite twin is migrations/sqlite/0003_e2ee.sql: keep them in step
-- (they differ only in how the one-time-key upload order is numbered).

-- Device identity keys as uploaded (signed JSON without `unsigned`), one object per device.
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys: `id` numbers them in upload order, as claims hand out the oldest first.
CREATE TABLE e2e_one_time_keys (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE INDEX e2e_one_time_keys_claim ON e2e_one_time_keys (user_id, device_id, algorithm, id);

-- At most one fallback key per device and algorithm; `used` (0/1) once a claim handed it out.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: key_type is 'master', 'self_signing' or 'user_signing'; public_key is
-- the unpadded base64 ed25519 key; key_json is the key object as uploaded.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload, added to the signed key when it is queried.
-- target_key_id is a device ID or a cross-signing public key; signer_key_id is `ed25519:...`.
CREATE TABLE e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- One row per change of a user's device keys, cross-signing keys or signatures, or deletion
-- of a device with keys, at a position of the global stream (/sync device_lists, /keys/changes).
CREATE TABLE device_list_changes (
    stream_pos BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (stream_pos, user_id)
);

-- To-device messages waiting for their device, until /sync acknowledges them.
CREATE TABLE to_device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_pos)
);

-- Transaction IDs of sendToDevice requests already handled, per sending device.
CREATE TABLE to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Key backup versions: numbered per user and never reused; deleted ones are kept, marked, so
-- that deleting again succeeds. etag counts the changes of the version's keys.
CREATE TABLE backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BIGINT NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
