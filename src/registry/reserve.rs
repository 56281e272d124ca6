//! Plan-time reservations: `reserve` (what a plan holds so its values stay stable, who may take
//! a reservation over, and why), and dropping reservations (a run's own, unused ones, or named
//! ones by the `reservations drop` command).

use super::*;

/// Whether a network another entry holds may be taken over by a plan of `origin` that pins
/// `pins`: only reservations ever yield (allocations never), and only those that
/// - an older plan of the same workspace made (its newer plans may take them over), or
/// - chose this network automatically, where the request pins a network overlapping it (the
///   automatic one can go anywhere; the pinned one cannot).
fn yields(e: &Entry, kind: Kind, cidr: &Ipv4Net, origin: &Origin, pins: &[Ipv4Net], now: OffsetDateTime) -> bool {
    if e.status != Status::Reserved || !e.holds(now) {
        return false;
    }
    // Older: made before this run started (runs of one workspace do not overlap: Terraform
    // locks the state for a plan or an apply).
    let stale_own = e.owner.as_ref() == Some(&origin.workspace)
        && e.run.as_ref() != Some(&origin.run)
        && e.reservation.as_ref().is_some_and(|r| r.reserved_at < origin.started);
    let auto_in_the_way = e.reservation.as_ref().is_some_and(|r| r.is_auto(kind))
        && pins.iter().any(|p| crate::net::overlaps(p, cidr));
    stale_own || auto_in_the_way
}

/// Remove the reservations `chosen` from the document: one `instance.reservation_drop` event
/// each, saying `why` when it was not a person's choice.
fn drop_entries(doc: &mut Document, chosen: &[Entry], why: Option<&str>) -> Vec<Draft> {
    chosen
        .iter()
        .map(|e| {
            doc.instances.remove(&e.name);
            let mut details = json!({"allocation": e.allocation.details(), "reservation": e.reservation});
            if let Some(why) = why {
                details["why"] = json!(why);
            }
            Draft::new("instance.reservation_drop", &e.name, details)
        })
        .collect()
}

impl Registry {
    /// Plan time: reserve networks for `name` (or renew its reservation, keeping its values),
    /// so the plan shows concrete values that apply will get. A refused request writes nothing.
    pub fn reserve(
        &self,
        name: &str,
        wants: &Wants,
        backend: &str,
        host: &[External],
    ) -> Result<Planned, RegistryError> {
        validate_name(name)?;
        // An allocated name is answered without the exclusive lock: nothing is written.
        let doc = self.store.load()?;
        if let Some(e) = doc.instances.get(name).filter(|e| e.status == Status::Allocated) {
            let now = self.clock.now();
            let occupied = occupied_by_others(&doc, name, now, host);
            let allocation = alloc::assign(&self.pools, wants, &occupied, Some(&e.allocation))
                .map_err(|source| RegistryError::Alloc {
                    name: name.into(),
                    source,
                })?;
            return Ok(Planned::Existing {
                entry: e.clone(),
                allocation,
            });
        }
        enum Outcome {
            Done(Planned),
            Refused(RegistryError),
        }
        let ttl = self.ttl;
        let actor = self.actor.clone();
        let pools = self.pools;
        let origin = self.origin.clone();
        let declared = &self.declared;
        let outcome = self.commit(|doc, now| {
            let occupied = occupied_by_others(doc, name, now, host);
            let previous = doc.instances.get(name).cloned();
            if let Some(prev) = previous.as_ref().filter(|e| e.status == Status::Allocated) {
                // Allocated between our read and the lock: answer as above.
                let allocation = alloc::assign(&pools, wants, &occupied, Some(&prev.allocation))
                    .map_err(|source| RegistryError::Alloc {
                        name: name.into(),
                        source,
                    })?;
                return Ok((
                    Outcome::Done(Planned::Existing {
                        entry: prev.clone(),
                        allocation,
                    }),
                    vec![],
                ));
            }
            // Taken over since this name's plan by a request of another run: that plan (a saved
            // plan being applied, or the next plan) fails once, naming the taker. The run that
            // took it plans the name afresh.
            if let Some((prev, t)) = previous.as_ref().and_then(|e| e.reservation.as_ref().and_then(|r| r.taken.as_ref()).map(|t| (e, t))) {
                let lost = t.run != origin.run;
                let err = RegistryError::ReservationTaken {
                    name: name.into(),
                    allocation: prev.allocation,
                    by: t.by.clone(),
                    at: rfc3339(t.at),
                    why: t.why.clone(),
                };
                doc.instances.remove(name);
                if lost {
                    let draft = Draft::new(
                        "instance.reservation_lost",
                        name,
                        json!({"allocation": prev.allocation.details(), "taken_by": t.by}),
                    );
                    return Ok((Outcome::Refused(err), vec![draft]));
                }
            }
            let previous = previous.filter(|e| e.reservation.as_ref().is_none_or(|r| r.taken.is_none()));
            // A live reservation of this name by another workspace: that configuration plans an
            // instance of the same name. Two states must never hold one instance.
            if let Some(prev) = previous.as_ref().filter(|e| e.holds(now)) {
                if let Some(by) = prev.owner.as_ref().filter(|o| **o != origin.workspace) {
                    let until = prev.reservation.as_ref().map(|r| rfc3339(r.expires_at)).unwrap_or_default();
                    return Ok((
                        Outcome::Refused(RegistryError::ReservedElsewhere { name: name.into(), by: by.clone(), until }),
                        vec![],
                    ));
                }
            }
            // What another workspace let expire is not this plan's: start afresh.
            let previous = previous.filter(|e| e.owner.as_ref().is_none_or(|o| *o == origin.workspace));
            // A reservation that expired and whose automatic networks were taken since is lost:
            // drop it and say so (a saved plan must never be applied with other values).
            if let Some(prev) = previous.as_ref().filter(|e| !e.holds(now)) {
                let taken: Vec<String> = wants
                    .iter()
                    .filter(|(_, w)| matches!(w, Want::Auto))
                    .filter_map(|(k, _)| prev.allocation.get(k).map(|c| (k, c)))
                    .filter_map(|(k, c)| {
                        alloc::find_overlap(&occupied, &c)
                            .map(|o| format!("{} {c} is now held by {}", k.attribute(), o.holder))
                    })
                    .collect();
                if !taken.is_empty() {
                    let expired_at = prev
                        .reservation
                        .as_ref()
                        .map(|r| rfc3339(r.expires_at))
                        .unwrap_or_default();
                    doc.instances.remove(name);
                    let err = RegistryError::ReservationLost {
                        name: name.into(),
                        allocation: prev.allocation,
                        expired_at: expired_at.clone(),
                        taken: taken.join("; "),
                    };
                    let draft = Draft::new(
                        "instance.reservation_lost",
                        name,
                        json!({"allocation": prev.allocation.details(), "expired_at": expired_at, "taken": taken}),
                    );
                    return Ok((Outcome::Refused(err), vec![draft]));
                }
            }
            let prefer = previous
                .as_ref()
                .map(|e| e.allocation)
                .or_else(|| doc.released.get(name).map(|r| r.allocation));
            // First try: around everything held, and around what the other instances of this
            // configuration pin (they may simply not be planned yet).
            let mut around = occupied.clone();
            around.extend(
                declared
                    .iter()
                    .filter(|p| p.name != name)
                    .map(|p| Occupied {
                        cidr: p.cidr,
                        holder: Holder::Instance {
                            name: p.name.clone(),
                            kind: p.kind,
                            status: "pinned in this configuration".into(),
                        },
                    }),
            );
            // Then around what is held only; then, only when that fails, with what this request
            // may take over out of the way.
            let retry = |e: &AllocError| matches!(e, AllocError::Conflict { .. } | AllocError::Exhausted { .. });
            let first = alloc::assign(&pools, wants, &around, prefer.as_ref())
                .or_else(|e| if retry(&e) { alloc::assign(&pools, wants, &occupied, prefer.as_ref()) } else { Err(e) });
            let (allocation, taken_over) = match first {
                Ok(a) => (a, Vec::new()),
                Err(e) if retry(&e) => {
                    let pins: Vec<Ipv4Net> = wants
                        .iter()
                        .filter_map(|(_, w)| match w {
                            Want::Pinned(c) => Some(c),
                            Want::Auto => None,
                        })
                        .collect();
                    let soft = occupied_except(doc, name, now, host, |e, kind, cidr| yields(e, kind, cidr, &origin, &pins, now));
                    let a = alloc::assign(&pools, wants, &soft, prefer.as_ref())
                        .map_err(|source| RegistryError::Alloc { name: name.into(), source })?;
                    let taken: Vec<Entry> = doc
                        .instances
                        .values()
                        .filter(|e| e.name != name && e.holds(now) && e.status == Status::Reserved)
                        .filter(|e| e.allocation.iter().any(|(_, c)| a.iter().any(|(_, m)| crate::net::overlaps(&c, &m))))
                        .cloned()
                        .collect();
                    (a, taken)
                }
                Err(source) => return Err(RegistryError::Alloc { name: name.into(), source }),
            };
            let mut drafts = Vec::new();
            let mut lost_in_this_run = None;
            for e in &taken_over {
                let older = e.reservation.as_ref().is_some_and(|r| r.reserved_at < origin.started);
                let why = if e.owner.as_ref() == Some(&origin.workspace) && e.run.as_ref() != Some(&origin.run) && older {
                    "an older plan of this workspace had reserved them, and this newer plan needed the room"
                } else {
                    "they had been chosen automatically, and a pinned value takes precedence"
                };
                // The entry stays, holding nothing, so that the plan it was made for (a saved
                // plan applied later) fails naming the taker instead of getting other values.
                if let Some(r) = doc.instances.get_mut(&e.name).and_then(|t| t.reservation.as_mut()) {
                    r.taken = Some(TakenOver {
                        by: name.to_string(),
                        run: origin.run.clone(),
                        at: now,
                        why: why.to_string(),
                    });
                }
                drafts.push(Draft::new(
                    "instance.reservation_taken",
                    &e.name,
                    json!({"allocation": e.allocation.details(), "by": name, "why": why}),
                ));
                if e.run.as_ref() == Some(&origin.run) && lost_in_this_run.is_none() {
                    // Terraform already has that instance's plan: this plan cannot stand.
                    lost_in_this_run = wants.iter().find_map(|(kind, w)| match w {
                        Want::Pinned(cidr) => e
                            .allocation
                            .iter()
                            .find(|(_, c)| crate::net::overlaps(c, &cidr))
                            .map(|(_, c)| (kind, cidr, e.name.clone(), c)),
                        Want::Auto => None,
                    });
                }
            }
            let expires_at = now + ttl;
            let renewed = previous.as_ref().is_some_and(|e| e.holds(now));
            let first_run = previous
                .as_ref()
                .filter(|e| e.holds(now))
                .and_then(|e| e.reservation.as_ref())
                .and_then(|r| r.first_run.clone())
                .unwrap_or_else(|| origin.run.clone());
            let pinned: Vec<Kind> = wants.iter().filter(|(_, w)| matches!(w, Want::Pinned(_))).map(|(k, _)| k).collect();
            let entry = Entry {
                name: name.into(),
                allocation,
                backend: backend.into(),
                status: Status::Reserved,
                created_at: previous.as_ref().map(|e| e.created_at).unwrap_or(now),
                federated: vec![],
                reservation: Some(Reservation {
                    reserved_at: now,
                    by: actor.clone(),
                    expires_at,
                    first_run: Some(first_run),
                    pinned,
                    taken: None,
                }),
                lab: None,
                owner: Some(origin.workspace.clone()),
                run: Some(origin.run.clone()),
                creating: None,
            };
            doc.instances.insert(name.into(), entry.clone());
            drafts.push(Draft::new(
                "instance.reserve",
                name,
                json!({
                    "allocation": allocation.details(),
                    "backend": backend,
                    "expires_at": rfc3339(expires_at),
                    "renewed": renewed,
                    "workspace": origin.workspace,
                }),
            ));
            match lost_in_this_run {
                Some((kind, cidr, other, other_cidr)) => Ok((
                    Outcome::Refused(RegistryError::TakenInThisRun { name: name.into(), kind, cidr, other, other_cidr }),
                    drafts,
                )),
                None => Ok((Outcome::Done(Planned::Reserved(entry)), drafts)),
            }
        })?;
        match outcome {
            Outcome::Done(p) => Ok(p),
            Outcome::Refused(e) => Err(e),
        }
    }

    /// The run failed (a plan that Terraform will not keep): drop the reservations this run made
    /// that pinned nothing, so a plan that fails leaves nothing in anyone's way. Reservations
    /// that pin a network stay until they expire: they keep the next plan from handing those
    /// networks to an automatic request. Renewed reservations of earlier runs stay too.
    pub fn drop_run_reservations(&self) -> Result<Vec<String>, RegistryError> {
        let run = self.origin.run.clone();
        self.commit(|doc, _| {
            let chosen: Vec<Entry> = doc
                .instances
                .values()
                .filter(|e| e.status == Status::Reserved && e.run.as_ref() == Some(&run))
                .filter(|e| {
                    e.reservation
                        .as_ref()
                        .is_some_and(|r| r.first_run.as_ref() == Some(&run) && r.pinned.is_empty())
                })
                .cloned()
                .collect();
            let drafts = drop_entries(doc, &chosen, Some("the plan that made it failed"));
            Ok((chosen.into_iter().map(|e| e.name).collect(), drafts))
        })
    }

    /// A run of this workspace that destroyed instances ended cleanly: the workspace's
    /// reservations that no call of the run used go. Terraform plans the configuration's
    /// creates before a destroy too (its refresh), and nothing would ever claim what that
    /// reserved; a saved plan they were kept for is stale now (the destroy changed the state).
    pub fn drop_unused_reservations(&self, used: &dyn Fn(&str) -> bool) -> Result<Vec<String>, RegistryError> {
        let workspace = self.origin.workspace.clone();
        self.commit(|doc, _| {
            let chosen: Vec<Entry> = doc
                .instances
                .values()
                .filter(|e| e.status == Status::Reserved && e.owner.as_ref() == Some(&workspace) && !used(&e.name))
                .cloned()
                .collect();
            let drafts = drop_entries(doc, &chosen, Some("a destroy of its workspace ran, and nothing of it used this reservation"));
            Ok((chosen.into_iter().map(|e| e.name).collect(), drafts))
        })
    }

    /// Reservations (live and expired), oldest first.
    pub fn reservations(&self) -> Result<Vec<Entry>, RegistryError> {
        let doc = self.store.load()?;
        let mut v: Vec<Entry> = doc
            .instances
            .into_values()
            .filter(|e| e.status == Status::Reserved)
            .collect();
        v.sort_by_key(|e| e.created_at);
        Ok(v)
    }

    /// Drop reservations before they expire: the given names, or every reservation when
    /// `names` is empty (only expired ones when `expired_only`). Allocated entries are never
    /// touched. Returns what was dropped; one event per dropped reservation.
    pub fn drop_reservations(
        &self,
        names: &[String],
        expired_only: bool,
    ) -> Result<Vec<Entry>, RegistryError> {
        self.commit(|doc, now| {
            let chosen: Vec<Entry> = doc
                .instances
                .values()
                .filter(|e| e.status == Status::Reserved)
                .filter(|e| names.is_empty() || names.contains(&e.name))
                .filter(|e| !expired_only || !e.holds(now))
                .cloned()
                .collect();
            let drafts = drop_entries(doc, &chosen, None);
            Ok((chosen, drafts))
        })
    }
}
