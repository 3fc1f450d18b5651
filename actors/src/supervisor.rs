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
    /// `replacing`: the caller knows that this child stopped itself normally (a session
    /// that hibernated), so if it is still on record (its exit not handled yet) a new one
    /// starts in its place.
    StartChild {
        key: String,
        spec: Arc<dyn ChildSpec>,
        replacing: Option<ActorId>,
        reply: RpcReplyPort<Result<ActorCell, String>>,
    },
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
            SupervisorMsg::StartChild { key, spec, replacing, reply } => {
                let result = match state.children.get(&key) {
                    Some((_, cell)) if replacing != Some(cell.get_id()) => Ok(cell.clone()),
                    _ => state.start(key, spec, &myself.get_cell()).await.map_err(|e| e.to_string()),
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
                if state.children.get(&key).is_some_and(|(_, current)| current.get_id() != cell.get_id()) {
                    // A newer child runs under this key already (started in place of
                    // this one, which stopped itself): nothing to do.
                    return Ok(());
                }
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
                if state.children.get(&key).is_some_and(|(_, current)| current.get_id() != cell.get_id()) {
                    return Ok(());
                }
                tracing::warn!(supervisor = %state.name, child = %key, error = %err, "child failed");
                state.restart(key, &myself.get_cell()).await
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A child that counts its starts and stops normally on request.
    struct Child;
    enum ChildMsg {
        StopNormally,
    }

    impl Actor for Child {
        type Msg = ChildMsg;
        type State = ();
        type Arguments = Arc<AtomicUsize>;

        async fn pre_start(&self, _me: ActorRef<ChildMsg>, starts: Arc<AtomicUsize>) -> Result<(), ActorProcessingErr> {
            starts.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        async fn handle(&self, me: ActorRef<ChildMsg>, msg: ChildMsg, _: &mut ()) -> Result<(), ActorProcessingErr> {
            match msg {
                ChildMsg::StopNormally => me.stop(Some(NORMAL_EXIT.to_owned())),
            }
            Ok(())
        }
    }

    struct Spec {
        name: String,
        starts: Arc<AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl ChildSpec for Spec {
        async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
            Ok(Actor::spawn_linked(Some(self.name.clone()), Child, self.starts.clone(), sup).await?.0.get_cell())
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn supervisor(name: &str, max_restarts: usize) -> (ActorRef<SupervisorMsg>, tokio::task::JoinHandle<()>) {
        let args = SupervisorArgs {
            name: name.into(),
            policy: RestartPolicy { max_restarts, window: Duration::from_secs(60) },
            initial: vec![],
            faults: Faults::disabled(),
        };
        Actor::spawn(Some(name.into()), Supervisor, args).await.expect("supervisor starts")
    }

    async fn start_child(sup: &ActorRef<SupervisorMsg>, name: &str, starts: &Arc<AtomicUsize>) -> ActorCell {
        let spec: Arc<dyn ChildSpec> = Arc::new(Spec { name: name.into(), starts: starts.clone() });
        let key = name.to_owned();
        ractor::call_t!(sup, |reply| SupervisorMsg::StartChild { key, spec, replacing: None, reply }, 5000)
            .expect("call")
            .expect("child starts")
    }

    #[tokio::test]
    async fn a_killed_child_is_restarted_and_a_normal_exit_is_not() {
        let (sup, _) = supervisor("t1-sup", 10).await;
        let starts = Arc::new(AtomicUsize::new(0));
        let first = start_child(&sup, "t1-child", &starts).await;
        // Asking again for the same key answers the running child.
        assert_eq!(start_child(&sup, "t1-child", &starts).await.get_id(), first.get_id());
        first.kill();
        until("restart", || starts.load(Ordering::SeqCst) == 2).await;
        let stats = ractor::call_t!(sup, SupervisorMsg::Stats, 5000).expect("stats");
        assert_eq!((stats.children, stats.restarts, stats.restarts_by_key["t1-child"]), (1, 1, 1));

        let current: ActorRef<ChildMsg> = ractor::registry::where_is("t1-child").expect("running").into();
        current.cast(ChildMsg::StopNormally).expect("cast");
        let s = sup.clone();
        for _ in 0..500 {
            let stats = ractor::call_t!(s, SupervisorMsg::Stats, 5000).expect("stats");
            if stats.children == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = ractor::call_t!(sup, SupervisorMsg::Stats, 5000).expect("stats");
        assert_eq!((stats.children, stats.restarts), (0, 1), "normal exit is not restarted");
        assert_eq!(starts.load(Ordering::SeqCst), 2);
        sup.stop(None);
    }

    #[tokio::test]
    async fn too_many_restarts_escalate_to_the_parent() {
        let (sup, handle) = supervisor("t2-sup", 3).await;
        let starts = Arc::new(AtomicUsize::new(0));
        start_child(&sup, "t2-child", &starts).await;
        for n in 1..=3 {
            let cell = ractor::registry::where_is("t2-child").expect("child running");
            cell.kill();
            until("restart", || starts.load(Ordering::SeqCst) == n + 1).await;
            // The next kill must hit the new instance.
            until("registered", || ractor::registry::where_is("t2-child").is_some_and(|c| c.get_id() != cell.get_id()))
                .await;
        }
        // The fourth failure in the window is one too many: the supervisor fails itself
        // (its parent, if any, would now restart it), taking its children down with it.
        ractor::registry::where_is("t2-child").expect("child running").kill();
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("supervisor stopped").expect("joined");
        assert!(ractor::registry::where_is("t2-sup").is_none());
        until("children gone", || ractor::registry::where_is("t2-child").is_none()).await;
        assert_eq!(starts.load(Ordering::SeqCst), 4);
    }
}
