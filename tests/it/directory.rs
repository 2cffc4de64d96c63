//! Room directory: aliases, canonical alias checks, visibility, /publicRooms.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;
use crate::room_util::{C, create_room, enc, join, public_room, put_state, state};

#[tokio::test]
async fn alias_lifecycle_and_permissions() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = public_room(&alice).await;
    let alias = format!("#pets:{}", server.server_name);
    let path = format!("{C}/directory/room/{}", enc(&alias));

    // Only joined members create aliases, only local ones, only valid ones.
    bob.put(&path, json!({ "room_id": room })).await.assert_error(403, "M_FORBIDDEN");
    alice
        .put(&format!("{C}/directory/room/{}", enc("#x:elsewhere.org")), json!({ "room_id": room }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    alice
        .put(&format!("{C}/directory/room/{}", enc("nohash")), json!({ "room_id": room }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    alice
        .put(&path, json!({ "room_id": format!("!nope:{}", server.server_name) }))
        .await
        .assert_error(404, "M_NOT_FOUND");
    alice.put(&path, json!({})).await.assert_error(400, "M_BAD_JSON");
    alice.put(&path, json!({ "room_id": room })).await.ok();
    alice.put(&path, json!({ "room_id": room })).await.assert_error(409, "M_UNKNOWN");

    // Anyone resolves it, without a token too.
    let resolved = server.get(&path).await.ok();
    assert_eq!(resolved, json!({ "room_id": room, "servers": [server.server_name] }));
    server
        .get(&format!("{C}/directory/room/{}", enc(&format!("#none:{}", server.server_name))))
        .await
        .assert_error(404, "M_NOT_FOUND");

    // Local aliases of a room: members only.
    let aliases = format!("{C}/rooms/{}/aliases", enc(&room));
    assert_eq!(alice.get(&aliases).await.ok(), json!({ "aliases": [alias] }));
    bob.get(&aliases).await.assert_error(403, "M_FORBIDDEN");
    alice
        .get(&format!("{C}/rooms/{}/aliases", enc(&format!("!nope:{}", server.server_name))))
        .await
        .assert_error(404, "M_NOT_FOUND");

    // Bob joins and adds his own alias; carol (joined, PL 0) may delete neither.
    join(&bob, &room).await;
    join(&carol, &room).await;
    let bobs = format!("{C}/directory/room/{}", enc(&format!("#bobs:{}", server.server_name)));
    bob.put(&bobs, json!({ "room_id": room })).await.ok();
    carol.delete(&path, json!({})).await.assert_error(403, "M_FORBIDDEN");
    carol.delete(&bobs, json!({})).await.assert_error(403, "M_FORBIDDEN");
    // The creator of an alias deletes it; so does a room admin (alice) for others' aliases.
    bob.delete(&bobs, json!({})).await.ok();
    bob.put(&bobs, json!({ "room_id": room })).await.ok();
    alice.delete(&bobs, json!({})).await.ok();
    server.get(&bobs).await.assert_error(404, "M_NOT_FOUND");
    alice.delete(&bobs, json!({})).await.assert_error(404, "M_NOT_FOUND");

    // Resolving lists every server with joined members: here, just this one.
    let resolved = server.get(&path).await.ok();
    assert_eq!(resolved["servers"], json!([server.server_name]));
    alice.delete(&path, json!({})).await.ok();
    server.get(&path).await.assert_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn canonical_alias_must_point_at_the_room() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = public_room(&alice).await;
    let other = public_room(&alice).await;
    let mine = format!("#mine:{}", server.server_name);
    let theirs = format!("#theirs:{}", server.server_name);
    alice.put(&format!("{C}/directory/room/{}", enc(&mine)), json!({ "room_id": room })).await.ok();
    alice.put(&format!("{C}/directory/room/{}", enc(&theirs)), json!({ "room_id": other })).await.ok();

    let put = |content: Value| put_state(&alice, &room, "m.room.canonical_alias", "", content);
    put(json!({ "alias": theirs })).await.assert_error(400, "M_BAD_ALIAS");
    put(json!({ "alias": mine, "alt_aliases": [format!("#unknown:{}", server.server_name)] }))
        .await
        .assert_error(400, "M_BAD_ALIAS");
    put(json!({ "alias": "not an alias" })).await.assert_error(400, "M_INVALID_PARAM");
    put(json!({ "alt_aliases": ["#remote:elsewhere.org"] })).await.assert_error(400, "M_BAD_ALIAS");
    put(json!({ "alias": mine })).await.ok();
    assert_eq!(state(&alice, &room, "m.room.canonical_alias", "").await, json!({ "alias": mine }));

    // Deleting an alias takes it out of the canonical alias event...
    let bobs = format!("#bobs:{}", server.server_name);
    let bob = server.register("bob").await;
    join(&bob, &room).await;
    bob.put(&format!("{C}/directory/room/{}", enc(&bobs)), json!({ "room_id": room })).await.ok();
    put(json!({ "alias": mine, "alt_aliases": [bobs] })).await.ok();
    alice.delete(&format!("{C}/directory/room/{}", enc(&mine)), json!({})).await.ok();
    assert_eq!(state(&alice, &room, "m.room.canonical_alias", "").await, json!({ "alt_aliases": [bobs] }));
    // ...when its deleter may change that event; bob (PL 0) may not, the alias goes anyway.
    bob.delete(&format!("{C}/directory/room/{}", enc(&bobs)), json!({})).await.ok();
    assert_eq!(state(&alice, &room, "m.room.canonical_alias", "").await, json!({ "alt_aliases": [bobs] }));
    // Aliases already in the event are not checked again, even when they no longer resolve.
    alice.put(&format!("{C}/directory/room/{}", enc(&mine)), json!({ "room_id": room })).await.ok();
    put(json!({ "alias": mine, "alt_aliases": [bobs] })).await.ok();
    put(json!({ "alias": mine, "alt_aliases": [bobs, theirs] })).await.assert_error(400, "M_BAD_ALIAS");
}

#[tokio::test]
async fn directory_visibility() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "visibility": "public", "preset": "public_chat" })).await;
    let path = format!("{C}/directory/list/room/{}", enc(&room));
    assert_eq!(server.get(&path).await.ok(), json!({ "visibility": "public" }));
    server
        .get(&format!("{C}/directory/list/room/{}", enc(&format!("!x:{}", server.server_name))))
        .await
        .assert_error(404, "M_NOT_FOUND");

    bob.put(&path, json!({ "visibility": "private" })).await.assert_error(403, "M_FORBIDDEN");
    join(&bob, &room).await;
    bob.put(&path, json!({ "visibility": "private" })).await.assert_error(403, "M_FORBIDDEN");
    alice.put(&path, json!({ "visibility": "hidden" })).await.assert_error(400, "M_INVALID_PARAM");
    alice.put(&path, json!({ "visibility": "private" })).await.ok();
    assert_eq!(server.get(&path).await.ok(), json!({ "visibility": "private" }));
    // The default is public.
    alice.put(&path, json!({})).await.ok();
    assert_eq!(server.get(&path).await.ok(), json!({ "visibility": "public" }));
    server.request(Method::PUT, &path, None, Some(&json!({}))).await.assert_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn public_rooms_entries_filter_and_pages() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for i in 0..5 {
        let body = json!({ "visibility": "public", "preset": "public_chat", "name": format!("Room {i}"), "topic": format!("topic {i}") });
        rooms.push(create_room(&alice, body).await);
    }
    // Not published: never listed.
    create_room(&alice, json!({ "preset": "public_chat", "name": "Room hidden" })).await;
    // The most populated room comes first.
    join(&bob, &rooms[3]).await;
    let alias = format!("#special:{}", server.server_name);
    alice.put(&format!("{C}/directory/room/{}", enc(&alias)), json!({ "room_id": rooms[2] })).await.ok();
    put_state(&alice, &rooms[2], "m.room.canonical_alias", "", json!({ "alias": alias })).await.ok();
    put_state(&alice, &rooms[2], "m.room.avatar", "", json!({ "url": "mxc://x/y" })).await.ok();
    put_state(&alice, &rooms[2], "m.room.history_visibility", "", json!({ "history_visibility": "world_readable" }))
        .await
        .ok();

    let all = server.get(&format!("{C}/publicRooms")).await.ok();
    assert_eq!(all["total_room_count_estimate"], json!(5));
    let chunk = all["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 5);
    assert_eq!(chunk[0]["room_id"], json!(rooms[3]));
    assert_eq!(chunk[0]["num_joined_members"], json!(2));
    let entry = chunk.iter().find(|e| e["room_id"] == json!(rooms[2])).unwrap();
    assert_eq!(
        *entry,
        json!({
            "room_id": rooms[2],
            "name": "Room 2",
            "topic": "topic 2",
            "canonical_alias": alias,
            "avatar_url": "mxc://x/y",
            "num_joined_members": 1,
            "world_readable": true,
            "guest_can_join": false,
            "join_rule": "public",
        })
    );
    assert!(all.get("next_batch").is_none() && all.get("prev_batch").is_none());

    // Search over name, topic and alias; room types.
    let search = |term: &str| {
        let body = json!({ "filter": { "generic_search_term": term } });
        let alice = alice.clone();
        async move { alice.post(&format!("{C}/publicRooms"), body).await.ok() }
    };
    let ids = |v: &Value| v["chunk"].as_array().unwrap().iter().map(|e| e["room_id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(&search("ROOM 4").await), vec![json!(rooms[4])]);
    assert_eq!(ids(&search("topic 1").await), vec![json!(rooms[1])]);
    assert_eq!(ids(&search("special").await), vec![json!(rooms[2])]);
    assert_eq!(search("nothing like it").await["chunk"], json!([]));
    let typed = alice.post(&format!("{C}/publicRooms"), json!({ "filter": { "room_types": ["m.space"] } })).await.ok();
    assert_eq!(typed["chunk"], json!([]));
    let untyped = alice.post(&format!("{C}/publicRooms"), json!({ "filter": { "room_types": [null] } })).await.ok();
    assert_eq!(untyped["chunk"].as_array().unwrap().len(), 5);
    server
        .request(Method::POST, &format!("{C}/publicRooms"), None, Some(&json!({})))
        .await
        .assert_error(401, "M_MISSING_TOKEN");

    // Pages of two, forwards then backwards, each room once and in the same order.
    let order = ids(&all);
    let mut seen = Vec::new();
    let mut last = server.get(&format!("{C}/publicRooms?limit=2")).await.ok();
    seen.extend(ids(&last));
    while let Some(next) = last["next_batch"].as_str() {
        last = server.get(&format!("{C}/publicRooms?limit=2&since={next}")).await.ok();
        seen.extend(ids(&last));
    }
    assert_eq!(seen, order);
    let mut back = ids(&last);
    let mut prev = last["prev_batch"].as_str().map(str::to_owned);
    while let Some(p) = prev {
        let page = alice.post(&format!("{C}/publicRooms"), json!({ "limit": 2, "since": p })).await.ok();
        back.splice(0..0, ids(&page));
        prev = page["prev_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(back, order);
    server.get(&format!("{C}/publicRooms?since=garbage")).await.assert_error(400, "M_INVALID_PARAM");
    server.get(&format!("{C}/publicRooms?limit=x")).await.assert_error(400, "M_INVALID_PARAM");
}
