//! A one-for-one supervisor with a restart-intensity limit (Erlang style).
//!
//! Children are started from a [`ChildSpec`] under a key. When a child fails (panic,
//! error, or killed), the supervisor starts it again from the same spec; when it stops
//! with [`crate::NORMAL_EXIT`] it is forgotten. More than `max_restarts` restarts within
//! `window` means something is wrong beyond one child: the supervisor fails itself and so
//! escalates to its own parent, which restarts it (and, with it, a clean set of children).
//!
//! The default `handle_supervisor_evt` of ractor stops the parent when a child exits;
//! this one overrides it, as every supervisor must.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};

use crate::NORMAL_EXIT;
use crate::faults::Faults;

/// How to (re)start one child.
#[async_trait::async_trait]
pub trait ChildSpec: Send + Sync + 'static {
    /// Spawns the child linked to `supervisor`. Called again for every restart, so the
    /// child must rebuild its state from durable sources (database, shared handles).
    async fn spawn(&self, supervisor: ActorCell) -> Result<ActorCell, SpawnErr>;
}

/// Restart intensity: at most `max_restarts` within `window`.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self { max_restarts: 100, window: Duration::from_secs(10) }
    }
}

/// Counters for tests and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Children running now.
    pub children: usize,
    /// Restarts since this supervisor (instance) started.
    pub restarts: u64,
    /// Restarts per child key.
    pub restarts_by_key: HashMap<String, u64>,
}

pub enum SupervisorMsg {
    /// Starts a child under `key` unless one runs already; answers its cell either way.
    StartChild { key: String, spec: Arc<dyn ChildSpec>, reply: RpcReplyPort<Result<ActorCell, String>> },
    /// Answers the counters.
    Stats(RpcReplyPort<SupervisorStats>),
}

pub struct Supervisor;

pub struct SupervisorArgs {
    /// Name used in logs and fault injection.
    pub name: String,
    pub policy: RestartPolicy,
    /// Children to start at once (e.g. the node supervisor's sub-supervisors).
    pub initial: Vec<(String, Arc<dyn ChildSpec>)>,
    pub faults: Faults,
}

pub struct SupervisorState {
    name: String,
    policy: RestartPolicy,
    faults: Faults,
    /// Running children: actor id → key.
    by_actor: HashMap<ActorId, String>,
    /// Every key's spec and current cell.
    children: HashMap<String, (Arc<dyn ChildSpec>, ActorCell)>,
    recent_restarts: VecDeque<Instant>,
    stats: SupervisorStats,
}

/// Attempts to spawn a child whose name may still be held by its dying predecessor.
const SPAWN_ATTEMPTS: u32 = 50;
const SPAWN_RETRY: Duration = Duration::from_millis(10);

async fn spawn_with_retry(spec: &Arc<dyn ChildSpec>, sup: &ActorCell) -> Result<ActorCell, SpawnErr> {
    let mut attempt = 0;
    loop {
        match spec.spawn(sup.clone()).await {
            Ok(cell) => return Ok(cell),
            Err(SpawnErr::ActorAlreadyRegistered(_)) if attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(SPAWN_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl SupervisorState {
    async fn start(&mut self, key: String, spec: Arc<dyn ChildSpec>, me: &ActorCell) -> Result<ActorCell, SpawnErr> {
        let cell = spawn_with_retry(&spec, me).await?;
        self.by_actor.insert(cell.get_id(), key.clone());
        self.children.insert(key, (spec, cell.clone()));
        self.stats.children = self.children.len();
        Ok(cell)
    }

    async fn restart(&mut self, key: String, me: &ActorCell) -> Result<(), ActorProcessingErr> {
        let Some((spec, _)) = self.children.get(&key).cloned() else { return Ok(()) };
        let now = Instant::now();
        while self.recent_restarts.front().is_some_and(|t| now.duration_since(*t) > self.policy.window) {
            self.recent_restarts.pop_front();
        }
        if self.recent_restarts.len() >= self.policy.max_restarts {
            tracing::error!(supervisor = %self.name, child = %key, "restart intensity exceeded, escalating");
            return Err(format!(
                "{}: more than {} restarts in {:?}",
                self.name, self.policy.max_restarts, self.policy.window
            )
            .into());
        }
        self.recent_restarts.push_back(now);
        self.stats.restarts += 1;
        *self.stats.restarts_by_key.entry(key.clone()).or_default() += 1;
        match self.start(key.clone(), spec, me).await {
            Ok(_) => {
                tracing::info!(supervisor = %self.name, child = %key, "child restarted");
                Ok(())
            }
            Err(e) => {
                self.children.remove(&key);
                self.stats.children = self.children.len();
                Err(format!("{}: cannot restart {key}: {e}", self.name).into())
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            name: args.name,
            policy: args.policy,
            faults: args.faults,
            by_actor: HashMap::new(),
            children: HashMap::new(),
            recent_restarts: VecDeque::new(),
            stats: SupervisorStats::default(),
        };
        for (key, spec) in args.initial {
            state.start(key, spec, &myself.get_cell()).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        state.faults.check(&state.name)?;
        match msg {
            SupervisorMsg::StartChild { key, spec, reply } => {
                let result = match state.children.get(&key) {
                    Some((_, cell)) => Ok(cell.clone()),
                    None => state.start(key, spec, &myself.get_cell()).await.map_err(|e| e.to_string()),
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let Some(key) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
                if reason.as_deref() == Some(NORMAL_EXIT) {
                    state.children.remove(&key);
                    state.stats.children = state.children.len();
                    return Ok(());
                }
                tracing::warn!(supervisor = %state.name, child = %key, ?reason, "child terminated abnormally");
                state.restart(key, &myself.get_cell()).await
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(key) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
                tracing::warn!(supervisor = %state.name, child = %key, error = %err, "child failed");
                state.restart(key, &myself.get_cell()).await
            }
            _ => Ok(()),
        }
    }
}
