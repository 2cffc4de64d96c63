//! State resolution (v2, and v2.1 for room version 12) over forked states, with ruma's
//! algorithm. The one place where states are merged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId, RoomVersionId};

use super::pdu::Pdu;
use super::state::StateMap;
use super::{get_pdu, versions};
use crate::Services;
use crate::error::{Error, Result};

/// Resolves several states of one room into one. A single state resolves to itself.
pub async fn resolve(svc: &Services, version: &RoomVersionId, states: &[Arc<StateMap>]) -> Result<StateMap> {
    match states {
        [] => return Ok(StateMap::new()),
        [one] => return Ok((**one).clone()),
        _ => {}
    }
    if states.iter().all(|s| **s == *states[0]) {
        return Ok((*states[0]).clone());
    }
    let rules = versions::rules(version)?;
    let v2 = rules.state_res.v2_rules().copied().unwrap_or(ruma::room_version_rules::StateResolutionV2Rules::V2_0);

    // The events the algorithm may look at: every state event and its whole auth chain.
    let mut events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    let mut auth_chains = Vec::with_capacity(states.len());
    for state in states {
        let chain = auth_chain(svc, state.values(), &mut events).await?;
        auth_chains.push(chain.into_iter().collect::<EventIdSet<OwnedEventId>>());
        for id in state.values() {
            if let Some(pdu) = get_pdu(svc, id).await? {
                events.insert(id.clone(), pdu);
            }
        }
    }
    let fetch = |id: &EventId| events.get(id).map(|p| p.as_ref().clone());
    let subgraph = |conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>| {
        Some(conflicted_subgraph(conflicted, &events).into_iter().collect::<EventIdSet<OwnedEventId>>())
    };
    ruma::state_res::resolve(&rules.authorization, &v2, states.iter().map(|s| &**s), auth_chains, fetch, subgraph)
        .map_err(|e| Error::Internal(anyhow::anyhow!("state resolution failed: {e}")))
}

/// The full auth chain of some events (excluding themselves), loading what it finds.
pub(crate) async fn auth_chain<'a>(
    svc: &Services,
    start: impl Iterator<Item = &'a OwnedEventId>,
    loaded: &mut HashMap<OwnedEventId, Arc<Pdu>>,
) -> Result<HashSet<OwnedEventId>> {
    let mut chain = HashSet::new();
    let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
    for id in start {
        if let Some(pdu) = get_pdu(svc, id).await? {
            queue.extend(pdu.auth_events.iter().cloned());
        }
    }
    while let Some(id) = queue.pop_front() {
        if !chain.insert(id.clone()) {
            continue;
        }
        if let Some(pdu) = get_pdu(svc, &id).await? {
            queue.extend(pdu.auth_events.iter().filter(|a| !chain.contains(*a)).cloned());
            loaded.insert(id, pdu);
        }
    }
    Ok(chain)
}

/// Room version 12's conflicted state subgraph: events that are ancestors of one
/// conflicted event and descendants of another, along auth edges (conflicted ones included).
fn conflicted_subgraph(
    conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> HashSet<OwnedEventId> {
    let set: HashSet<&OwnedEventId> = conflicted.values().flatten().collect();
    // Every ancestor of a conflicted event.
    let mut ancestors: HashSet<OwnedEventId> = HashSet::new();
    let mut stack: Vec<&OwnedEventId> = set.iter().copied().collect();
    while let Some(id) = stack.pop() {
        for parent in events.get(id).map(|p| p.auth_events.as_slice()).unwrap_or_default() {
            if ancestors.insert(parent.clone()) {
                stack.push(parent);
            }
        }
    }
    // Whether an event has a conflicted event among its ancestors (memoised walk).
    let mut memo: HashMap<OwnedEventId, bool> = HashMap::new();
    fn descends(
        id: &OwnedEventId,
        set: &HashSet<&OwnedEventId>,
        events: &HashMap<OwnedEventId, Arc<Pdu>>,
        memo: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        if let Some(known) = memo.get(id) {
            return *known;
        }
        memo.insert(id.clone(), false);
        let parents = events.get(id).map(|p| p.auth_events.clone()).unwrap_or_default();
        let result = parents.iter().any(|p| set.contains(p) || descends(p, set, events, memo));
        memo.insert(id.clone(), result);
        result
    }
    let mut result: HashSet<OwnedEventId> = set.iter().map(|id| (*id).clone()).collect();
    for id in &ancestors {
        if descends(id, &set, events, &mut memo) {
            result.insert(id.clone());
        }
    }
    result
}
