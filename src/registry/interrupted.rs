//! Creations that began and that no state of their workspace is known to hold: an entry is
//! claimed `creating`; the create marks it `answered` when it returns its result to Terraform
//! (which records the instance in its state, also a failed, tainted one); and it stops being a
//! creation when Terraform has surely received that answer: the provider process ends cleanly
//! (Terraform shuts a provider down only after its last answer), or a later refresh of the
//! workspace reads the instance. An apply killed part way (the provider or Terraform itself:
//! OOM killer, a cancelled pipeline, a power cut) leaves such entries, and labs that no state
//! knows: Terraform records an object only from an answer it received and then wrote down.
//!
//! - The next apply of the same workspace adopts them: its create of the same name takes the
//!   entry over (`claim`), and the backend repairs or finishes the half-made lab. That includes
//!   a creation answered in the instant before the kill (the answer may never have reached
//!   Terraform, or Terraform died before writing it): had the state kept it, the plan's refresh
//!   would have confirmed it and no create of the name would run.
//! - A `terraform destroy` (or any apply) of the workspace that destroys instances removes
//!   the ones no call of its own run concerns: they belong to this workspace's configuration,
//!   and no state of it showed them (every refresh, plan or destroy of an object the state
//!   holds confirms it). The one case this gets wrong: a run killed in the instant after an
//!   answer that Terraform did record, followed by a `-target`ed destroy that excludes that
//!   object before any other plan: its lab goes, and the next plan re-creates it.
//! - A removal that a killed destroy began is finished by the next destroy of the workspace,
//!   or taken back by the next apply's create of that name (which repairs the lab).
//! - Another workspace's interrupted creations are refused as any other name it holds; so is
//!   one whose provider process still runs (a Terraform killed moments ago: its provider
//!   stops within 30 seconds).
//!
//! Why "the same workspace" is safe: a workspace's runs never overlap (Terraform locks its
//! state for a plan or an apply), and no other workspace's state can hold its instances. The
//! one case left to people: a configuration declaring one name twice, applied with `-target`
//! on the second right after a kill that lost the first one's answer, would adopt the lab; such
//! a configuration is refused by any full plan.

use serde_json::json;
use time::OffsetDateTime;

use super::{Creating, Draft, Entry, FederationRecord, Origin, Registry, RegistryError, Status};

impl Creating {
    /// Begun now by the run `origin`.
    pub fn begun(since: OffsetDateTime, origin: &Origin) -> Creating {
        Creating { since, run: origin.run.clone(), removing: false, process: origin.process.clone(), answered: None }
    }

    /// Whether the provider process that began it still runs; `None` when that cannot be known
    /// here (another host, or not recorded). Boot id, pid and start time together name one
    /// process exactly, so a recycled pid never reads as running.
    pub fn running(&self) -> Option<bool> {
        let recorded = self.process.as_deref()?;
        let (boot, rest) = recorded.split_once('/')?;
        let (pid, _) = rest.split_once('/')?;
        if boot != crate::process::boot_id()? {
            // Another host (or this one before a reboot: then it cannot run).
            return None;
        }
        let pid: u32 = pid.parse().ok()?;
        Some(crate::process::identity(pid).as_deref() == Some(recorded))
    }

    /// One word for people: `removing` (a run of its workspace tears it down), `removal
    /// interrupted` (that run is gone), `interrupted` (the process that began it is gone, and
    /// it never answered), `unconfirmed` (it answered, then its process died before Terraform
    /// was known to have the answer), `allocated` (it answered, and its run goes on), else
    /// `creating` (it runs, or that cannot be known from this host).
    pub fn word(&self) -> &'static str {
        match (self.removing, self.running(), self.answered) {
            (true, Some(false), _) => "removal interrupted",
            (true, _, _) => "removing",
            (false, Some(false), None) => "interrupted",
            (false, Some(false), Some(_)) => "unconfirmed",
            // Made and answered by a run that is still at work on others.
            (false, _, Some(_)) => "allocated",
            _ => "creating",
        }
    }

    /// The pid of the process that began it, when recorded.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_deref()?.split('/').nth(1)?.parse().ok()
    }
}

impl Entry {
    /// Whether this is a creation that an earlier run of the workspace began and no state of
    /// it has shown since (`run`: the run asking).
    pub fn interrupted(&self, run: &str) -> bool {
        self.status == Status::Allocated && self.creating.as_ref().is_some_and(|c| c.run != run)
    }
}

impl Registry {
    /// The state of this workspace holds `name` (a refresh found it): its creation is over.
    pub fn confirm(&self, name: &str) -> Result<(), RegistryError> {
        let run = self.origin.run.clone();
        self.commit(|doc, _| {
            let Some(e) = doc.instances.get_mut(name) else { return Ok(((), vec![])) };
            // Also a destroy that a killed run began: the state still holds the instance.
            match e.creating.take() {
                Some(c) if c.run != run => {
                    let draft = Draft::new("instance.confirm", name, json!({"since": super::rfc3339(c.since), "removing": c.removing}));
                    Ok(((), vec![draft]))
                }
                other => {
                    e.creating = other;
                    Ok(((), vec![]))
                }
            }
        })
    }

    /// This run's create of `name` is answering Terraform (see the module docs).
    pub fn finish(&self, name: &str) -> Result<(), RegistryError> {
        let run = self.origin.run.clone();
        self.commit(|doc, now| {
            let Some(e) = doc.instances.get_mut(name) else { return Ok(((), vec![])) };
            let Some(c) = e.creating.as_mut().filter(|c| c.run == run && !c.removing && c.answered.is_none()) else {
                return Ok(((), vec![]));
            };
            c.answered = Some(now);
            Ok(((), vec![Draft::new("instance.created", name, json!({"allocation": e.allocation.details()}))]))
        })
    }

    /// This run destroys `name` (its state holds it): until the destroy is over, the entry
    /// says so, so that a run killed part way leaves a mark (`removing`) that the next refresh
    /// of the workspace keeps the instance in state by, even once its lab is gone, and the next
    /// destroy then finishes it.
    pub fn begin_destroy(&self, name: &str) -> Result<(), RegistryError> {
        let origin = self.origin.clone();
        self.commit(|doc, now| {
            let Some(e) = doc.instances.get_mut(name).filter(|e| e.status == Status::Allocated) else { return Ok(((), vec![])) };
            if e.creating.as_ref().is_some_and(|c| c.removing && c.run == origin.run) {
                return Ok(((), vec![]));
            }
            e.creating = Some(Creating { removing: true, ..Creating::begun(now, &origin) });
            Ok(((), vec![Draft::new("instance.destroying", name, json!({}))]))
        })
    }

    /// Whether a run other than this one began destroying `name` and was killed (or failed)
    /// before it was over.
    pub fn destroy_interrupted(&self, entry: &Entry) -> bool {
        entry.creating.as_ref().is_some_and(|c| c.removing && c.run != self.origin.run)
    }

    /// This run's create of the federation `id` is answering Terraform.
    pub fn finish_federation(&self, id: &str) -> Result<(), RegistryError> {
        let run = self.origin.run.clone();
        self.commit(|doc, now| {
            let Some(r) = doc.federations.get_mut(id) else { return Ok(((), vec![])) };
            let Some(c) = r.creating.as_mut().filter(|c| c.run == run && !c.removing && c.answered.is_none()) else {
                return Ok(((), vec![]));
            };
            c.answered = Some(now);
            Ok(((), vec![Draft::new("federation.created", id, json!({}))]))
        })
    }

    /// The provider is ending cleanly, so Terraform has every answer of this run: what it
    /// answered is created (see the module docs). Returns the names and federation ids.
    pub fn delivered(&self) -> Result<Vec<String>, RegistryError> {
        let run = self.origin.run.clone();
        let mine = |c: &Option<Creating>| c.as_ref().is_some_and(|c| c.run == run && c.answered.is_some() && !c.removing);
        // Most runs (every plan) have nothing to deliver: they do not write.
        let doc = self.store.load()?;
        if !doc.instances.values().any(|e| mine(&e.creating)) && !doc.federations.values().any(|r| mine(&r.creating)) {
            return Ok(Vec::new());
        }
        self.commit(|doc, _| {
            let mut done = Vec::new();
            for e in doc.instances.values_mut().filter(|e| mine(&e.creating)) {
                e.creating = None;
                done.push(e.name.clone());
            }
            for (id, r) in doc.federations.iter_mut().filter(|(_, r)| mine(&r.creating)) {
                r.creating = None;
                done.push(id.clone());
            }
            if done.is_empty() {
                return Ok((done, vec![]));
            }
            let draft = Draft::new("run.delivered", &run, json!({"created": done}));
            Ok((done, vec![draft]))
        })
    }

    /// Whether this run is removing the interrupted creation `name` (a create of it waits).
    pub fn being_removed_by_this_run(&self, name: &str) -> Result<bool, RegistryError> {
        Ok(self
            .get(name)?
            .and_then(|e| e.creating)
            .is_some_and(|c| c.removing && c.run == self.origin.run))
    }

    /// The interrupted creations of this workspace (see the module docs).
    pub fn interrupted(&self) -> Result<Vec<Entry>, RegistryError> {
        let doc = self.store.load()?;
        Ok(doc
            .instances
            .into_values()
            .filter(|e| e.interrupted(&self.origin.run))
            .filter(|e| e.owner.as_ref().is_none_or(|o| *o == self.origin.workspace))
            .collect())
    }

    /// The state of this workspace holds the federation `id`: its creation is over.
    pub fn confirm_federation(&self, id: &str) -> Result<(), RegistryError> {
        let run = self.origin.run.clone();
        self.commit(|doc, _| {
            let Some(r) = doc.federations.get_mut(id) else { return Ok(((), vec![])) };
            match r.creating.take() {
                Some(c) if c.run != run => {
                    Ok(((), vec![Draft::new("federation.confirm", id, json!({"since": super::rfc3339(c.since)}))]))
                }
                other => {
                    r.creating = other;
                    Ok(((), vec![]))
                }
            }
        })
    }

    /// The interrupted federation creations of this workspace, by id.
    pub fn interrupted_federations(&self) -> Result<Vec<(String, FederationRecord)>, RegistryError> {
        let doc = self.store.load()?;
        let run = &self.origin.run;
        Ok(doc
            .federations
            .into_iter()
            .filter(|(_, r)| r.creating.as_ref().is_some_and(|c| c.run != *run))
            .filter(|(_, r)| r.owner.as_ref().is_none_or(|o| *o == self.origin.workspace))
            .collect())
    }

    /// Mark an interrupted federation creation as being removed by this run (so that no
    /// create adopts it meanwhile); `false` when it is not one of this workspace's any more.
    pub fn begin_federation_removal(&self, id: &str) -> Result<bool, RegistryError> {
        let origin = self.origin.clone();
        self.commit(|doc, _| {
            let Some(r) = doc.federations.get_mut(id) else { return Ok((false, vec![])) };
            let mine = r.owner.as_ref().is_none_or(|o| *o == origin.workspace);
            if !(mine && r.creating.as_ref().is_some_and(|c| c.run != origin.run)) {
                return Ok((false, vec![]));
            }
            super::still_running(id, r.creating.as_ref())?;
            let c = r.creating.as_mut().expect("checked: creating");
            c.removing = true;
            let draft = Draft::new("federation.interrupted_remove", id, json!({"since": super::rfc3339(c.since), "run": c.run, "answered": c.answered.map(super::rfc3339)}));
            c.run = origin.run.clone();
            c.process = origin.process.clone();
            Ok((true, vec![draft]))
        })
    }

    /// Mark an interrupted creation as being removed by this run (so that no create adopts it
    /// meanwhile); `false` when it is not one of this workspace's any more.
    pub fn begin_removal(&self, name: &str) -> Result<bool, RegistryError> {
        let origin = self.origin.clone();
        self.commit(|doc, _| {
            let Some(e) = doc.instances.get_mut(name) else { return Ok((false, vec![])) };
            let mine = e.owner.as_ref().is_none_or(|o| *o == origin.workspace);
            // A removal that a killed run began is taken over too (`still_running` guards a live one).
            if !mine || !e.interrupted(&origin.run) {
                return Ok((false, vec![]));
            }
            super::still_running(name, e.creating.as_ref())?;
            let c = e.creating.as_mut().expect("interrupted: creating");
            c.removing = true;
            let draft = Draft::new(
                "instance.interrupted_remove",
                name,
                json!({
                    "since": super::rfc3339(c.since),
                    "run": c.run,
                    "answered": c.answered.map(super::rfc3339),
                    "allocation": e.allocation.details(),
                }),
            );
            c.run = origin.run.clone();
            c.process = origin.process.clone();
            Ok((true, vec![draft]))
        })
    }
}
