-- Unread counts read per room from an index alone: notifications past the room's read
-- receipt are counted on push_notifications_room, and the rare highlights and threaded
-- notifications have partial indexes of their own (storage::push::unread_counts).
CREATE INDEX push_notifications_highlights ON push_notifications (user_id, room_id, stream_pos) WHERE highlight = 1;
CREATE INDEX push_notifications_threads ON push_notifications (user_id, room_id, thread_id, stream_pos)
    WHERE thread_id <> 'main';
