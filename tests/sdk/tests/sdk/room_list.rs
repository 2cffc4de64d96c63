//! The room list as Element X runs it: matrix-sdk-ui's `SyncService` and `RoomListService`
//! over Plexus's simplified sliding sync (MSC4186), with `Timeline`s for reading messages.

use std::time::Duration;

use eyeball_im::{Vector, VectorDiff};
use futures_util::{Stream, StreamExt};
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{RoomId, UserId};
use matrix_sdk::{Client, Room, RoomState};
use matrix_sdk_ui::room_list_service::RoomListItem;
use matrix_sdk_ui::room_list_service::filters::new_filter_non_left;
use matrix_sdk_ui::sync_service::SyncService;
use matrix_sdk_ui::timeline::{RoomExt, Timeline};

use crate::harness::{Server, accept_invite, keep_syncing, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_list_sorts_by_activity_and_shows_live_messages_invites_and_encrypted_ones() {
    let server = Server::start().await;
    let bob = server.register("bob").await;
    let _bob_sync = keep_syncing(&bob);
    server.register("alice").await;
    // Alice's app: a fresh login, as Element X does on a new phone.
    let alice = server.login("alice").await;
    let alice_id = alice.user_id().expect("logged in").to_owned();
    let bob_id = bob.user_id().expect("logged in").to_owned();

    // Three rooms, created in this order; bob is in the oldest.
    let first = create_room(&alice, "first").await;
    first.invite_user_by_id(&bob_id).await.expect("invited");
    accept_invite(&bob, first.room_id()).await;
    let second = create_room(&alice, "second").await;
    let third = create_room(&alice, "third").await;
    let [first, second, third] = [first, second, third].map(|r| r.room_id().to_owned());

    let sync_service = SyncService::builder(alice.clone()).build().await.expect("sync service");
    sync_service.start().await;
    let room_list_service = sync_service.room_list_service();
    let all_rooms = room_list_service.all_rooms().await.expect("all rooms");
    let (entries, controller) = all_rooms.entries_with_dynamic_adapters(20);
    controller.set_filter(Box::new(new_filter_non_left()));
    let mut list = RoomList { rooms: Vector::new(), diffs: Box::pin(entries) };
    list.wait_until("the three rooms, most recent first", |rooms| ids(rooms) == [&*third, &*second, &*first]).await;

    // Bob's message makes the oldest room the most recent (the server's `bump_stamp`).
    let bob_first = bob.get_room(&first).expect("bob's room");
    bob_first.send(RoomMessageEventContent::text_plain("hi alice")).await.expect("sent");
    list.wait_until("the active room on top", |rooms| ids(rooms) == [&*first, &*third, &*second]).await;

    // Opening the room (a room subscription, as the app does for rooms on screen) shows the
    // message, and the next one arrives live.
    room_list_service.subscribe_to_rooms(&[&*first]).await;
    let first_timeline = room_list_service.room(&first).expect("listed").timeline().await.expect("timeline");
    wait_for("bob's message in the timeline", async || message(&first_timeline, "hi alice").await).await;
    bob_first.send(RoomMessageEventContent::text_plain("still there?")).await.expect("sent");
    wait_for("the live message in the timeline", async || message(&first_timeline, "still there?").await).await;

    // An invite from bob to an encrypted room shows up.
    let secret = create_room(&bob, "secret").await;
    secret.enable_encryption().await.expect("encryption enabled");
    secret.invite_user_by_id(&alice_id).await.expect("invited");
    let invited = list
        .wait_until("the invite", |rooms| {
            rooms.iter().any(|r| r.room_id() == secret.room_id() && r.state() == RoomState::Invited)
        })
        .await
        .iter()
        .find(|r| r.room_id() == secret.room_id())
        .expect("listed")
        .clone();

    // Alice accepts it; bob's encrypted message is decrypted in alice's timeline.
    invited.join().await.expect("alice joins");
    wait_for("alice's join, seen by bob", async || joined(&secret, &alice_id).await.then_some(())).await;
    room_list_service.subscribe_to_rooms(&[secret.room_id()]).await;
    let secret_timeline = room_list_service.room(secret.room_id()).expect("listed").timeline().await.expect("timeline");
    let sent = secret.send(RoomMessageEventContent::text_plain("the cake is a lie")).await.expect("sent");
    assert!(sent.encryption_info.is_some(), "bob's message went out encrypted");
    let encrypted = wait_for("the decrypted message in the timeline", async || {
        message(&secret_timeline, "the cake is a lie").await
    })
    .await;
    assert!(encrypted, "the message reached alice encrypted");
    list.wait_until("the joined room on top", |rooms| {
        rooms.front().is_some_and(|r| r.room_id() == secret.room_id() && r.state() == RoomState::Joined)
    })
    .await;

    sync_service.stop().await;
}

/// The room list as the app shows it: the diffs of the stream applied in order.
struct RoomList<S> {
    rooms: Vector<RoomListItem>,
    diffs: std::pin::Pin<Box<S>>,
}

impl<S: Stream<Item = Vec<VectorDiff<RoomListItem>>>> RoomList<S> {
    /// Applies updates until `done` holds (30 s at most); returns the list then.
    async fn wait_until(&mut self, what: &str, done: impl Fn(&Vector<RoomListItem>) -> bool) -> &Vector<RoomListItem> {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while !done(&self.rooms) {
                for diff in self.diffs.next().await.expect("the room list stream goes on") {
                    diff.apply(&mut self.rooms);
                }
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}; the list is {:?}", ids(&self.rooms));
        &self.rooms
    }
}

fn ids(rooms: &Vector<RoomListItem>) -> Vec<&RoomId> {
    rooms.iter().map(|r| r.room_id()).collect()
}

async fn create_room(client: &Client, name: &str) -> Room {
    let mut request = create_room::v3::Request::new();
    request.name = Some(name.to_owned());
    client.create_room(request).await.expect("room created")
}

/// `Some(whether it arrived encrypted)` once the timeline shows a text message `body`.
async fn message(timeline: &Timeline, body: &str) -> Option<bool> {
    timeline.items().await.iter().filter_map(|item| item.as_event()).find_map(|event| {
        let text = event.content().as_message()?;
        (text.body() == body).then(|| event.encryption_info().is_some())
    })
}

async fn joined(room: &Room, user: &UserId) -> bool {
    let member = room.get_member_no_sync(user).await.expect("member lookup");
    member.is_some_and(|m| *m.membership() == MembershipState::Join)
}
