//! Room upgrades.

use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser};
use crate::room_util::{C, create_room, enc, join, put_state, state};

async fn upgrade(user: &TestUser, room: &str, body: Value) -> crate::harness::Reply {
    user.post(&format!("{C}/rooms/{}/upgrade", enc(room)), body).await
}

#[tokio::test]
async fn upgrade_moves_the_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let old = create_room(
        &alice,
        json!({
            "preset": "public_chat", "visibility": "public", "room_version": "11",
            "name": "Old", "topic": "Old topic", "room_alias_name": "place",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }],
        }),
    )
    .await;
    let alias = format!("#place:{}", server.server_name);
    join(&bob, &old).await;
    join(&carol, &old).await;
    let mut pl = state(&alice, &old, "m.room.power_levels", "").await;
    pl["users"][&bob.user_id] = json!(50);
    put_state(&alice, &old, "m.room.power_levels", "", pl).await.ok();
    put_state(&alice, &old, "m.room.member", &carol.user_id, json!({ "membership": "ban", "reason": "spam" }))
        .await
        .ok();

    upgrade(&bob, &old, json!({ "new_version": "12" })).await.assert_error(403, "M_FORBIDDEN");
    upgrade(&carol, &old, json!({ "new_version": "12" })).await.assert_error(403, "M_FORBIDDEN");
    upgrade(&alice, &old, json!({ "new_version": "99" })).await.assert_error(400, "M_UNSUPPORTED_ROOM_VERSION");
    upgrade(&alice, &old, json!({})).await.assert_error(400, "M_BAD_JSON");
    upgrade(&alice, &format!("!nope:{}", server.server_name), json!({ "new_version": "12" }))
        .await
        .assert_error(404, "M_NOT_FOUND");

    let new = upgrade(&alice, &old, json!({ "new_version": "12" })).await.ok()["replacement_room"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);

    // The old room points at the new one and is closed to ordinary users.
    assert_eq!(state(&alice, &old, "m.room.tombstone", "").await["replacement_room"], json!(new));
    let old_pl = state(&alice, &old, "m.room.power_levels", "").await;
    assert_eq!((old_pl["events_default"].clone(), old_pl["invite"].clone()), (json!(50), json!(50)));
    assert_eq!(state(&alice, &old, "m.room.canonical_alias", "").await, json!({}));
    assert_eq!(
        server.get(&format!("{C}/directory/list/room/{}", enc(&old))).await.ok()["visibility"],
        json!("private")
    );

    // The new room: predecessor, copied state, power levels with the users, the ban, the alias.
    let create = state(&alice, &new, "m.room.create", "").await;
    assert_eq!((create["predecessor"]["room_id"].clone(), create["room_version"].clone()), (json!(old), json!("12")));
    assert_eq!(state(&alice, &new, "m.room.name", "").await["name"], json!("Old"));
    assert_eq!(state(&alice, &new, "m.room.topic", "").await["topic"], json!("Old topic"));
    assert_eq!(state(&alice, &new, "m.room.join_rules", "").await["join_rule"], json!("public"));
    assert_eq!(state(&alice, &new, "m.room.history_visibility", "").await["history_visibility"], json!("joined"));
    let new_pl = state(&alice, &new, "m.room.power_levels", "").await;
    assert_eq!(new_pl["users"], json!({ bob.user_id.clone(): 50 }), "the v12 creator is not listed");
    let ban = state(&alice, &new, "m.room.member", &carol.user_id).await;
    assert_eq!(ban, json!({ "membership": "ban", "reason": "spam" }));
    assert_eq!(state(&alice, &new, "m.room.canonical_alias", "").await, json!({ "alias": alias }));
    assert_eq!(server.get(&format!("{C}/directory/room/{}", enc(&alias))).await.ok()["room_id"], json!(new));
    assert_eq!(server.get(&format!("{C}/directory/list/room/{}", enc(&new))).await.ok()["visibility"], json!("public"));
    // Nobody else was invited or joined.
    let members = alice.get(&format!("{C}/rooms/{}/joined_members", enc(&new))).await.ok();
    assert_eq!(members["joined"].as_object().unwrap().keys().collect::<Vec<_>>(), vec![&alice.user_id]);

    // Back to a version without privileged creators: the creator keeps power level 100.
    let older = upgrade(&alice, &new, json!({ "new_version": "10" })).await.ok()["replacement_room"]
        .as_str()
        .unwrap()
        .to_owned();
    let pl = state(&alice, &older, "m.room.power_levels", "").await;
    assert_eq!(pl["users"], json!({ alice.user_id.clone(): 100, bob.user_id.clone(): 50 }));
    assert_eq!(state(&alice, &older, "m.room.create", "").await["predecessor"]["room_id"], json!(new));
}

#[tokio::test]
async fn upgrade_to_v12_with_additional_creators() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = create_room(&alice, json!({ "preset": "public_chat", "room_version": "11" })).await;
    join(&bob, &old).await;
    let body = json!({ "new_version": "12", "additional_creators": [bob.user_id] });
    let new = upgrade(&alice, &old, body).await.ok()["replacement_room"].as_str().unwrap().to_owned();
    let create = state(&alice, &new, "m.room.create", "").await;
    assert_eq!(create["additional_creators"], json!([bob.user_id]));
    let pl = state(&alice, &new, "m.room.power_levels", "").await;
    assert_eq!(pl["users"], json!({}), "creators are never listed in v12 power levels");
}

/// Two upgrades of one room at once: one makes the replacement room, the other is refused
/// (400, as Synapse) instead of making a second one.
#[tokio::test]
async fn concurrent_upgrades_of_one_room_do_not_both_succeed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let old = create_room(&alice, json!({ "preset": "private_chat", "room_version": "11" })).await;
    let body = json!({ "new_version": "12" });
    let (first, second) = tokio::join!(upgrade(&alice, &old, body.clone()), upgrade(&alice, &old, body));
    let mut statuses = [first.status.as_u16(), second.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400], "{first:?} {second:?}");
    let refused = if first.status == 400 { &first } else { &second };
    refused.assert_error(400, "M_UNKNOWN");
    let replacement = if first.status == 200 { &first } else { &second }.body["replacement_room"].clone();
    assert_eq!(state(&alice, &old, "m.room.tombstone", "").await["replacement_room"], replacement);
    // Once it is over, the room may be upgraded again.
    upgrade(&alice, &old, json!({ "new_version": "12" })).await.ok();
}
