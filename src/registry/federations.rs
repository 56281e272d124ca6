//! Federation records in the registry: the pair's tags on both entries, its declaration
//! (reason, namespaces) and the events of creating, changing, repairing and removing it.

use super::*;

fn tag(doc: &mut Document, a: &str, b: &str, on: bool) {
    for (me, peer) in [(a, b), (b, a)] {
        if let Some(e) = doc.instances.get_mut(me) {
            e.federated.retain(|p| p != peer);
            if on {
                e.federated.push(peer.to_string());
                e.federated.sort();
            }
        }
    }
}

impl Registry {
    /// Tag `a` and `b` as federated with each other and keep what the federation was declared
    /// with (`record`). Both must be allocated; a pair already federated is refused. `details`
    /// (reason, CIDRs opened) go into the event.
    pub fn federate(&self, a: &str, b: &str, record: FederationRecord, details: serde_json::Value) -> Result<(), RegistryError> {
        let (a, b) = names_pair(a, b);
        let origin = self.origin.clone();
        self.commit(|doc, now| {
            for n in [&a, &b] {
                match doc.instances.get(n.as_str()) {
                    None => return Err(RegistryError::NotFound { name: n.clone() }),
                    Some(e) if e.status != Status::Allocated => {
                        return Err(RegistryError::NotAllocated { name: n.clone() })
                    }
                    _ => {}
                }
            }
            let ea = &doc.instances[a.as_str()];
            let eb = &doc.instances[b.as_str()];
            let id = format!("{a}+{b}");
            if ea.federated.contains(&b) && eb.federated.contains(&a) {
                // A creation (or removal) of this workspace that was interrupted: this create
                // adopts it.
                let adoptable = doc.federations.get(&id).is_some_and(|r| {
                    r.owner.as_ref().is_none_or(|o| *o == origin.workspace) && r.creating.as_ref().is_some_and(|c| c.run != origin.run)
                });
                if !adoptable {
                    return Err(RegistryError::AlreadyFederated {
                        a: a.clone(),
                        b: b.clone(),
                    });
                }
                still_running(&id, doc.federations[&id].creating.as_ref())?;
                let r = doc.federations.get_mut(&id).expect("adoptable: recorded");
                let c = r.creating.as_mut().expect("adoptable: creating");
                let d = Draft::new(
                    "federation.adopt",
                    &id,
                    json!({"interrupted_since": rfc3339(c.since), "run_before": c.run, "answered_before": c.answered.map(rfc3339)}),
                );
                c.run = origin.run.clone();
                c.process = origin.process.clone();
                c.answered = None;
                c.removing = false;
                return Ok(((), vec![d]));
            }
            tag(doc, &a, &b, true);
            let mut record = record.clone();
            record.owner = Some(origin.workspace.clone());
            record.creating = Some(Creating::begun(now, &origin));
            doc.federations.insert(id, record);
            let d = Draft::new("federation.create", &format!("{a}+{b}"), details.clone());
            Ok(((), vec![d]))
        })
    }

    /// Put back missing federation tags of an existing federation (drift repair).
    pub fn retag(&self, a: &str, b: &str) -> Result<bool, RegistryError> {
        let (a, b) = names_pair(a, b);
        self.commit(|doc, _| {
            for n in [&a, &b] {
                if !doc.instances.contains_key(n.as_str()) {
                    return Err(RegistryError::NotFound { name: n.clone() });
                }
            }
            let missing = !doc.instances[a.as_str()].federated.contains(&b)
                || !doc.instances[b.as_str()].federated.contains(&a);
            if !missing {
                return Ok((false, vec![]));
            }
            tag(doc, &a, &b, true);
            let d = Draft::new("federation.repair", &format!("{a}+{b}"), json!({"restored": "registry tags"}));
            Ok((true, vec![d]))
        })
    }

    /// A federation's declaration changed (reason, namespaces): keep it, with an event.
    pub fn update_federation(&self, a: &str, b: &str, reason: Option<String>, namespaces: Vec<String>, details: serde_json::Value) -> Result<(), RegistryError> {
        let (a, b) = names_pair(a, b);
        let now = self.clock.now();
        self.commit(|doc, _| {
            let id = format!("{a}+{b}");
            let record = doc.federations.entry(id.clone()).or_insert_with(|| FederationRecord {
                reason: None,
                namespaces: Vec::new(),
                created_at: now,
                owner: None,
                creating: None,
            });
            record.reason = reason.clone();
            record.namespaces = namespaces.clone();
            Ok(((), vec![Draft::new("federation.update", &id, details.clone())]))
        })
    }

    /// Remove the federation tags of a pair (tolerates tags or instances already gone).
    pub fn unfederate(&self, a: &str, b: &str, details: serde_json::Value) -> Result<(), RegistryError> {
        let (a, b) = names_pair(a, b);
        self.commit(|doc, _| {
            tag(doc, &a, &b, false);
            doc.federations.remove(&format!("{a}+{b}"));
            let d = Draft::new("federation.destroy", &format!("{a}+{b}"), details.clone());
            Ok(((), vec![d]))
        })
    }
}
