//! [`Rebuilt`]: a component's one live instance, built on first use and
//! rebuilt after a fault, for the kinds whose instance outlives a call
//! (guides, tool parsers, auth, routers).
//!
//! A fault leaves an instance that may not be entered again, so whoever
//! sees one calls [`Rebuilt::discard`]; the next call builds a fresh
//! instance. Each discard bumps the [`Rebuilt::generation`], so resources
//! made in an older instance are known to be gone with it.

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::error::PluginError;
use crate::runtime::{Loaded, deadline_ticks};
use crate::sandbox::StoreState;

/// How to build a live instance of a component: instantiate and `init` it.
type Build<Pre, P> = Box<dyn Fn(&Loaded<Pre>) -> Result<(Store<StoreState>, P), PluginError> + Send + Sync>;

pub(crate) struct Rebuilt<Pre, P> {
    pub component: Loaded<Pre>,
    build: Build<Pre, P>,
    live: Option<(Store<StoreState>, P)>,
    generation: u64,
}

impl<Pre, P> Rebuilt<Pre, P> {
    /// Not built yet: the first [`Self::live`] builds it with `build`.
    pub fn new(
        component: Loaded<Pre>,
        build: impl Fn(&Loaded<Pre>) -> Result<(Store<StoreState>, P), PluginError> + Send + Sync + 'static,
    ) -> Self {
        Self { component, build: Box::new(build), live: None, generation: 0 }
    }

    /// The live instance, built if need be.
    pub fn live(&mut self) -> Result<&mut (Store<StoreState>, P), PluginError> {
        if self.live.is_none() {
            self.live = Some((self.build)(&self.component)?);
        }
        Ok(self.live.as_mut().expect("set above"))
    }

    /// Drop the instance after a fault; the next call builds a new one.
    pub fn discard(&mut self) {
        self.live = None;
        self.generation += 1;
    }

    /// How many times it was discarded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Drop a resource of the live instance under a fresh call deadline
    /// (nothing to do once that instance is gone). A drop that fails (the
    /// destructor trapped or overran) leaves the instance unable to be
    /// entered again: it is discarded.
    pub fn drop_resource(&mut self, resource: ResourceAny, generation: u64) {
        if generation != self.generation {
            return;
        }
        let deadline = self.component.limits.call_deadline;
        let Some((store, _)) = self.live.as_mut() else { return };
        store.set_epoch_deadline(deadline_ticks(deadline));
        if resource.resource_drop(&mut *store).is_err() {
            self.discard();
        }
    }
}
