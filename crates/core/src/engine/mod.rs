//! The turn engine: the lifecycle of DESIGN §4 and the streaming rules of §6, written once
//! against the ports and called by every function's handler.

use std::sync::Arc;

use crate::auth::TokenIssuer;
use crate::config::Settings;
use crate::hooks::LifecycleHooks;
use crate::ports::{ChatStore, Clock, Connections, IdGenerator, TurnQueue};

/// What every handler works with. Built once per process (Lambda cold start, local gateway).
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn ChatStore>,
    pub queue: Arc<dyn TurnQueue>,
    pub connections: Arc<dyn Connections>,
    pub hooks: Arc<dyn LifecycleHooks>,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdGenerator>,
    pub tokens: TokenIssuer,
    pub settings: Arc<Settings>,
}
