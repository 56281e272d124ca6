//! Which instance names the resource objects of this run use, as Terraform's calls reveal them:
//! one provider process serves one `terraform plan` (or one `apply`), and Terraform plans every
//! resource of the configuration in it. Terraform never tells a provider a resource's address,
//! so two resources that set the same `name` can only be told apart by what is called for them:
//!
//! - an object in state is refreshed (`read`), then planned with its prior state
//!   (`plan_update`), or planned for destruction (`plan_destroy`) when it left the
//!   configuration;
//! - a replacement (a replace-forcing change, `-replace`) is `plan_update`, then `plan_create`
//!   carrying the private state that `plan_update` planned: the same object, linked;
//! - a tainted object is refreshed, then planned with `plan_create` alone;
//! - a new object is `plan_create` alone.
//!
//! So a name may be held in one run by one object: two unlinked creates, or an unlinked create
//! next to an object in state that keeps or leaves the name, are two resources using one name,
//! whichever call comes first. Data only; the resource turns a [`Clash`] into a diagnostic.

use std::collections::HashMap;
use std::sync::Mutex;

/// Two resource objects of one run using one instance name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clash {
    /// Two new objects plan the same name.
    TwoCreates,
    /// A new object plans a name that an object in state keeps.
    KeptByExisting,
    /// A new object plans a name that an object leaving the configuration is destroyed with
    /// (a renamed resource address without a `moved` block, or a changed `count` index).
    DestroyedByExisting,
    /// Two objects in state have the same name.
    TwoExisting,
}

#[derive(Debug, Default, Clone, Copy)]
struct Uses {
    read: u32,
    kept: u32,
    created: u32,
    destroyed: u32,
    /// Destroys applied (not planned): only recorded, never a clash (the destroy half of a
    /// replacement comes before its create).
    torn_down: u32,
}

/// The names planned in this run (a provider process), shared by every call.
#[derive(Debug, Default)]
pub struct NameBook {
    names: Mutex<HashMap<String, Uses>>,
}

impl NameBook {
    /// An empty book.
    pub fn new() -> NameBook {
        NameBook::default()
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Uses) -> T) -> T {
        let mut names = self.names.lock().expect("name book lock");
        f(names.entry(name.to_string()).or_default())
    }

    /// `read` refreshed an object of this name (it is in state).
    pub fn read(&self, name: &str) {
        self.with(name, |u| u.read += 1);
    }

    /// `plan_update` planned an object in state that keeps this name (replaced or not).
    pub fn keep(&self, name: &str) -> Result<(), Clash> {
        self.with(name, |u| {
            u.kept += 1;
            if u.created > 0 {
                Err(Clash::KeptByExisting)
            } else if u.kept > 1 {
                Err(Clash::TwoExisting)
            } else {
                Ok(())
            }
        })
    }

    /// `plan_destroy` planned an object of this name away.
    pub fn destroy(&self, name: &str) -> Result<(), Clash> {
        self.with(name, |u| {
            u.destroyed += 1;
            if u.created > 0 {
                Err(Clash::DestroyedByExisting)
            } else {
                Ok(())
            }
        })
    }

    /// `plan_create` of a new object (not the create half of a replacement).
    pub fn create(&self, name: &str) -> Result<(), Clash> {
        self.with(name, |u| {
            u.created += 1;
            if u.created > 1 {
                Err(Clash::TwoCreates)
            } else if u.kept > 0 {
                Err(Clash::KeptByExisting)
            } else if u.destroyed > 0 {
                Err(Clash::DestroyedByExisting)
            } else {
                Ok(())
            }
        })
    }

    /// An apply destroyed the object of this name (or key).
    pub fn torn_down(&self, name: &str) {
        self.with(name, |u| u.torn_down += 1);
    }

    /// Whether this run planned or applied the destroy of any instance (federation keys are
    /// not instance names).
    pub fn destroyed_any_instance(&self) -> bool {
        self.names
            .lock()
            .expect("name book lock")
            .iter()
            .any(|(k, u)| u.destroyed + u.torn_down > 0 && !k.starts_with("federation:"))
    }

    /// Whether any call of this run concerned this name (or key).
    pub fn used(&self, name: &str) -> bool {
        self.names.lock().expect("name book lock").get(name).is_some_and(|u| u.read + u.kept + u.created + u.destroyed + u.torn_down > 0)
    }

    /// Whether an object of this name was refreshed in this run and no object in state keeps
    /// the name: a create of it then replaces a tainted object.
    pub fn tainted_in_state(&self, name: &str) -> bool {
        self.with(name, |u| u.read > 0 && u.kept == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_halves_and_tainted_objects_hold_one_name() {
        let book = NameBook::new();
        // -replace: the object is kept (plan_update), its create half is linked, not recorded.
        book.read("acme");
        assert_eq!(book.keep("acme"), Ok(()));
        // taint: refreshed, then created.
        book.read("globex");
        assert!(book.tainted_in_state("globex"));
        assert_eq!(book.create("globex"), Ok(()));
        assert!(!book.tainted_in_state("acme"));
    }

    #[test]
    fn a_second_object_with_the_same_name_clashes_whichever_comes_first() {
        let book = NameBook::new();
        assert_eq!(book.create("a"), Ok(()));
        assert_eq!(book.create("a"), Err(Clash::TwoCreates));

        let book = NameBook::new();
        book.read("b");
        assert_eq!(book.keep("b"), Ok(()));
        assert_eq!(book.create("b"), Err(Clash::KeptByExisting));

        let book = NameBook::new();
        assert_eq!(book.create("c"), Ok(()));
        book.read("c");
        assert_eq!(book.keep("c"), Err(Clash::KeptByExisting));

        let book = NameBook::new();
        assert_eq!(book.destroy("d"), Ok(()));
        assert_eq!(book.create("d"), Err(Clash::DestroyedByExisting));
        let book = NameBook::new();
        assert_eq!(book.create("e"), Ok(()));
        assert_eq!(book.destroy("e"), Err(Clash::DestroyedByExisting));

        let book = NameBook::new();
        assert_eq!(book.keep("f"), Ok(()));
        assert_eq!(book.keep("f"), Err(Clash::TwoExisting));
    }
}
