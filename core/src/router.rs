//! Typed in-process routing of commands between stores.
//!
//! A saga issues commands of one type (`CheckoutCommand`); a [`Router`] sends each to
//! the store that owns it by trying typed extractors in order — no `Box<dyn Any>`, and an
//! unroutable command is a [`DispatchError::NoRoute`], not a silent drop.

use std::fmt;
use std::sync::Arc;

use crate::reducer::Reducer;
use crate::runtime::BoxFuture;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    #[error("no route for command {0}")]
    NoRoute(String),
    #[error("target refused the command: {0}")]
    Refused(String),
    #[error("target unavailable: {0}")]
    Unavailable(String),
}

/// Delivers commands of type `C` somewhere.
pub trait Dispatcher<C>: Send + Sync {
    /// Completes once the target has accepted the command (reduced it), not when all
    /// its effects are done.
    fn dispatch(&self, command: C) -> BoxFuture<'static, Result<(), DispatchError>>;
}

type Route<C> =
    Arc<dyn Fn(C) -> Result<BoxFuture<'static, Result<(), DispatchError>>, C> + Send + Sync>;

/// Routes commands to stores by typed extraction.
pub struct Router<C> {
    routes: Vec<Route<C>>,
}

impl<C> Default for Router<C> {
    fn default() -> Self {
        Router { routes: Vec::new() }
    }
}

impl<C> fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl<C: fmt::Debug + Send + 'static> Router<C> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the commands `extract` accepts to `store`.
    #[must_use]
    pub fn route<R: Reducer>(
        mut self,
        store: Store<R>,
        extract: impl Fn(C) -> Result<R::Action, C> + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Arc::new(move |command| {
            let action = extract(command)?;
            let refused = store.send(action).was_refused();
            Ok(Box::pin(std::future::ready(if refused {
                Err(DispatchError::Unavailable(format!(
                    "store {} is shutting down",
                    store.name()
                )))
            } else {
                Ok(())
            })))
        }));
        self
    }

    /// Sends the commands `extract` accepts to any dispatcher (another router, a remote
    /// client).
    #[must_use]
    pub fn route_to<T: 'static>(
        mut self,
        target: Arc<dyn Dispatcher<T>>,
        extract: impl Fn(C) -> Result<T, C> + Send + Sync + 'static,
    ) -> Self {
        self.routes.push(Arc::new(move |command| {
            Ok(target.dispatch(extract(command)?))
        }));
        self
    }
}

impl<C: fmt::Debug + Send + 'static> Dispatcher<C> for Router<C> {
    fn dispatch(&self, command: C) -> BoxFuture<'static, Result<(), DispatchError>> {
        let mut command = command;
        for route in &self.routes {
            match route(command) {
                Ok(sent) => return sent,
                Err(unclaimed) => command = unclaimed,
            }
        }
        Box::pin(std::future::ready(Err(DispatchError::NoRoute(format!(
            "{command:?}"
        )))))
    }
}
