//! A PDU as another server sends it, through every stage that needs no database, for every
//! room version: JSON -> canonical JSON, format checks, event ID (reference hash), signature
//! and hash verification (no keys), redaction, Plexus's own PDU parsing and client format.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus::rooms::{inbound, pdu::Pdu, versions};
use ruma::CanonicalJsonValue;
use ruma::signatures::PublicKeyMap;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(value) else { return };
    for version in versions::SUPPORTED {
        let rules = versions::rules(version).unwrap();
        let mut object = object.clone();
        if ruma::state_res::check_pdu_format(&object, &rules.event_format).is_err() {
            continue;
        }
        object.remove("unsigned");
        let Ok(event_id) = inbound::event_id_of(&object, &rules) else { continue };
        let _ = ruma::signatures::verify_event(&PublicKeyMap::new(), &object, &rules);
        if let Ok(redacted) = ruma::canonical_json::redact(object.clone(), &rules.redaction, None) {
            let _ = ruma::canonical_json::to_canonical_value(&redacted);
        }
        let json = CanonicalJsonValue::Object(object).to_string();
        if let Ok(pdu) = Pdu::parse(event_id, &json, None) {
            let _ = pdu.to_client();
            let _ = pdu.to_stripped();
            let _ = pdu.relation();
            let _ = pdu.canonical_object();
            let _ = ruma::state_res::auth_types_for_event(
                &pdu.kind,
                &pdu.sender,
                pdu.state_key.as_deref(),
                &pdu.content,
                &rules.authorization,
            );
        }
    }
});
