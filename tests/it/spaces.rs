//! Spaces: the hierarchy walk (order, depth, suggested rooms, visibility, paging) and room
//! summaries.

use plexus::federation::client;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser};
use crate::room_util::{create_room, enc, join, put_state};

const V1: &str = "/_matrix/client/v1";

async fn space(user: &TestUser, name: &str) -> String {
    create_room(user, json!({ "preset": "public_chat", "name": name, "creation_content": { "type": "m.space" } })).await
}

async fn add_child(user: &TestUser, parent: &str, child: &str, extra: Value) {
    let mut content = json!({ "via": [user.user_id.split_once(':').unwrap().1] });
    content.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    put_state(user, parent, "m.space.child", child, content).await.ok();
    // Children without `order` are sorted by timestamp: keep them apart.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
}

fn ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
}

fn list(rooms: &[&String]) -> Vec<String> {
    rooms.iter().map(|r| (*r).clone()).collect()
}

async fn hierarchy(user: &TestUser, room: &str, query: &str) -> crate::harness::Reply {
    user.get(&format!("{V1}/rooms/{}/hierarchy{query}", enc(room))).await
}

#[tokio::test]
async fn a_three_level_hierarchy_is_walked_depth_first_in_order_and_paged() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let root = space(&alice, "Root").await;
    let sub = space(&alice, "Sub").await;
    let leaf = create_room(&alice, json!({ "preset": "public_chat", "name": "Leaf" })).await;
    let ordered = create_room(&alice, json!({ "preset": "public_chat", "name": "Ordered" })).await;
    let secret = create_room(&alice, json!({ "preset": "private_chat", "name": "Secret" })).await;
    // Children: `sub` (no order, older), `ordered` (order "a": first), `secret` (invisible to bob).
    add_child(&alice, &root, &sub, json!({})).await;
    add_child(&alice, &root, &secret, json!({})).await;
    add_child(&alice, &root, &ordered, json!({ "order": "a", "suggested": true })).await;
    add_child(&alice, &sub, &leaf, json!({})).await;
    // A child without `via` is no child.
    put_state(&alice, &root, "m.space.child", &leaf, json!({})).await.ok();

    let all = hierarchy(&bob, &root, "").await.ok();
    assert_eq!(ids(&all), list(&[&root, &ordered, &sub, &leaf]), "bob does not see the private room");
    assert!(all.get("next_batch").is_none());
    let first = &all["rooms"][0];
    assert_eq!(first["name"], "Root");
    assert_eq!(first["room_type"], "m.space");
    assert_eq!(first["join_rule"], "public");
    assert_eq!(first["num_joined_members"], 1);
    assert_eq!(first["children_state"].as_array().unwrap().len(), 3, "sub, secret and ordered have a via");
    assert!(first["children_state"][0]["origin_server_ts"].is_u64());
    assert_eq!(all["rooms"][2]["children_state"][0]["state_key"], leaf.as_str());

    let with_secret = hierarchy(&alice, &root, "").await.ok();
    assert_eq!(ids(&with_secret), list(&[&root, &ordered, &sub, &leaf, &secret]));

    // Pages of two, then one; the token carries on where the page stopped.
    let page1 = hierarchy(&bob, &root, "?limit=2").await.ok();
    assert_eq!(ids(&page1), list(&[&root, &ordered]));
    let next = page1["next_batch"].as_str().unwrap().to_owned();
    let page2 = hierarchy(&bob, &root, &format!("?limit=2&from={next}")).await.ok();
    assert_eq!(ids(&page2), list(&[&sub, &leaf]));
    if let Some(next) = page2["next_batch"].as_str() {
        let page3 = hierarchy(&bob, &root, &format!("?limit=2&from={next}")).await.ok();
        assert_eq!(ids(&page3), Vec::<String>::new());
    }
    hierarchy(&bob, &root, &format!("?limit=2&max_depth=1&from={next}")).await.assert_error(400, "M_INVALID_PARAM");
    hierarchy(&bob, &root, "?from=garbage").await.assert_error(400, "M_INVALID_PARAM");
    hierarchy(&bob, &root, "?limit=0").await.assert_error(400, "M_INVALID_PARAM");

    // Depth and suggested rooms.
    assert_eq!(ids(&hierarchy(&bob, &root, "?max_depth=1").await.ok()), list(&[&root, &ordered, &sub]));
    assert_eq!(ids(&hierarchy(&bob, &root, "?max_depth=0").await.ok()), list(&[&root]));
    assert_eq!(ids(&hierarchy(&bob, &root, "?suggested_only=true").await.ok()), list(&[&root, &ordered]));

    // A private root is only for its members.
    hierarchy(&bob, &secret, "").await.assert_error(403, "M_FORBIDDEN");
    join(&bob, &sub).await;
    assert_eq!(hierarchy(&bob, &sub, "").await.ok()["rooms"][0]["num_joined_members"], 2);
}

#[tokio::test]
async fn a_cycle_of_spaces_lists_each_room_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let a = space(&alice, "A").await;
    let b = space(&alice, "B").await;
    add_child(&alice, &a, &b, json!({})).await;
    add_child(&alice, &b, &a, json!({})).await;
    assert_eq!(ids(&hierarchy(&alice, &a, "").await.ok()), list(&[&a, &b]));
}

#[tokio::test]
async fn room_summaries_show_what_the_requester_may_see() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let public = create_room(
        &alice,
        json!({ "preset": "public_chat", "name": "Lobby", "topic": "Hello", "room_alias_name": "lobby" }),
    )
    .await;
    let private = create_room(&alice, json!({ "preset": "private_chat", "name": "Private" })).await;

    let summary = |id: &str| format!("{V1}/room_summary/{}", enc(id));
    let anonymous = server.get(&summary(&public)).await.ok();
    assert_eq!(anonymous["name"], "Lobby");
    assert_eq!(anonymous["topic"], "Hello");
    assert_eq!(anonymous["join_rule"], "public");
    assert_eq!(anonymous["room_version"], "12");
    assert!(anonymous.get("membership").is_none());
    let by_alias = bob.get(&summary(&format!("#lobby:{}", server.server_name))).await.ok();
    assert_eq!(by_alias["room_id"], public.as_str());
    assert!(by_alias.get("membership").is_none(), "bob has no membership");
    assert_eq!(alice.get(&summary(&public)).await.ok()["membership"], "join");

    server.get(&summary(&private)).await.assert_error(404, "M_NOT_FOUND");
    bob.get(&summary(&private)).await.assert_error(404, "M_NOT_FOUND");
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)), json!({ "user_id": bob.user_id }))
        .await
        .ok();
    assert_eq!(bob.get(&summary(&private)).await.ok()["membership"], "invite");
    bob.get(&summary("!unknown:example.org")).await.assert_error(404, "M_NOT_FOUND");
    bob.get(&summary("nonsense")).await.assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn spaces_span_servers() {
    let a = TestServer::start_on("127.0.0.1", |c| c.federation.insecure_plain_http = true).await;
    let b = TestServer::start_on("127.0.0.2", |c| c.federation.insecure_plain_http = true).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let b_name = b.server_name.clone();
    let remote_space = create_room(
        &bob,
        json!({ "preset": "public_chat", "name": "Remote space", "creation_content": { "type": "m.space" } }),
    )
    .await;
    let remote_room = create_room(&bob, json!({ "preset": "public_chat", "name": "Remote room" })).await;
    let remote_private = create_room(&bob, json!({ "preset": "private_chat", "name": "Remote private" })).await;
    add_child(&bob, &remote_space, &remote_room, json!({})).await;
    add_child(&bob, &remote_space, &remote_private, json!({})).await;
    let root = space(&alice, "Root").await;
    put_state(&alice, &root, "m.space.child", &remote_space, json!({ "via": [b_name] })).await.ok();

    // B answers A's signed request: the space, the child A may see, the one it may not.
    let b_server = ruma::ServerName::parse(&b_name).unwrap();
    let path = format!("/_matrix/federation/v1/hierarchy/{}", enc(&remote_space));
    let answer: Value = client::request(&a.state, &b_server, Method::GET, &path, None).await.unwrap();
    assert_eq!(answer["room"]["name"], "Remote space");
    assert_eq!(answer["room"]["children_state"].as_array().unwrap().len(), 2);
    assert_eq!(answer["children"].as_array().unwrap().len(), 1);
    assert_eq!(answer["children"][0]["room_id"], remote_room.as_str());
    assert_eq!(answer["inaccessible_children"], json!([remote_private]));
    let private_path = format!("/_matrix/federation/v1/hierarchy/{}", enc(&remote_private));
    let hidden = client::request::<Value>(&a.state, &b_server, Method::GET, &private_path, None).await;
    assert!(hidden.is_err(), "a private room is hidden from a server without members");

    // Alice's walk crosses to B for the rooms A does not have.
    let walked = hierarchy(&alice, &root, "").await.ok();
    assert_eq!(ids(&walked), list(&[&root, &remote_space, &remote_room]));
    assert_eq!(walked["rooms"][1]["name"], "Remote space");
    assert_eq!(walked["rooms"][2]["name"], "Remote room");
}
