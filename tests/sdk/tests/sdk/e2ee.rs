//! End-to-end encryption with matrix-sdk's own crypto (vodozemac): Olm/Megolm between two
//! users, then cross-signing, secret storage and key backup restoring history on a new device.

use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

use crate::harness::{Server, accept_invite, fetch_decrypted, keep_syncing, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_decrypt_each_other_and_a_new_device_restores_from_backup() {
    let server = Server::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let _alice_sync = keep_syncing(&alice);
    let _bob_sync = keep_syncing(&bob);
    let bob_id = bob.user_id().expect("bob logged in").to_owned();

    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob_id.clone()];
    let alice_room = alice.create_room(request).await.expect("room created");
    alice_room.enable_encryption().await.expect("encryption enabled");
    let room_id = alice_room.room_id().to_owned();

    let bob_room = accept_invite(&bob, &room_id).await;
    wait_for("bob's join, seen by alice", async || {
        let member = alice_room.get_member_no_sync(&bob_id).await.expect("member lookup")?;
        (*member.membership() == MembershipState::Join).then_some(())
    })
    .await;

    let from_alice = alice_room.send(RoomMessageEventContent::text_plain("hello bob")).await.expect("sent");
    assert!(from_alice.encryption_info.is_some(), "alice's message went out encrypted");
    let from_alice = from_alice.response.event_id;
    let text = wait_for("bob to decrypt alice's message", async || fetch_decrypted(&bob_room, &from_alice).await).await;
    assert_eq!(text, "hello bob");

    let from_bob = bob_room.send(RoomMessageEventContent::text_plain("hello alice")).await.expect("sent");
    assert!(from_bob.encryption_info.is_some(), "bob's message went out encrypted");
    let from_bob = from_bob.response.event_id;
    let text = wait_for("alice to decrypt bob's message", async || fetch_decrypted(&alice_room, &from_bob).await).await;
    assert_eq!(text, "hello alice");

    // Alice sets up cross-signing (her first keys: the spec asks for no user-interactive
    // auth then) and recovery: secret storage plus a key backup holding both room keys.
    alice.encryption().bootstrap_cross_signing(None).await.expect("cross-signing set up");
    let recovery_key =
        alice.encryption().recovery().enable().wait_for_backups_to_upload().await.expect("recovery enabled");

    // A third device: no room keys yet (key forwarding is off), so history is unreadable...
    let alice3 = server.login("alice").await;
    let _alice3_sync = keep_syncing(&alice3);
    let alice3_room = wait_for("the room on the new device", async || alice3.get_room(&room_id)).await;
    assert_eq!(fetch_decrypted(&alice3_room, &from_bob).await, None, "no keys before the restore");

    // ...until it recovers with the recovery key: it imports the cross-signing keys, signs
    // itself (so it is verified), and downloads the room keys from the backup.
    alice3.encryption().recovery().recover(&recovery_key).await.expect("recovered");
    let own = alice3.encryption().get_own_device().await.expect("crypto store").expect("own device");
    assert!(own.is_cross_signed_by_owner() && own.is_verified(), "the new device verified itself via cross-signing");
    alice3.encryption().backups().download_room_keys_for_room(&room_id).await.expect("keys downloaded");
    assert_eq!(fetch_decrypted(&alice3_room, &from_bob).await.as_deref(), Some("hello alice"));
    assert_eq!(fetch_decrypted(&alice3_room, &from_alice).await.as_deref(), Some("hello bob"));

    // The signature went through the server: alice's first device and bob see the new
    // device as cross-signed by alice.
    let alice_id = alice.user_id().expect("alice logged in").to_owned();
    let alice3_device = alice3.device_id().expect("device id").to_owned();
    for (who, client) in [("alice's first device", &alice), ("bob", &bob)] {
        wait_for(&format!("{who} to see the new device cross-signed"), async || {
            let device = client.encryption().get_device(&alice_id, &alice3_device).await.expect("crypto store")?;
            device.is_cross_signed_by_owner().then_some(())
        })
        .await;
    }
    let seen_by_alice = alice.encryption().get_device(&alice_id, &alice3_device).await.expect("store").expect("device");
    assert!(seen_by_alice.is_verified(), "alice trusts her own identity, so her cross-signed device is verified");
}
