//! Fault injection: off by default. When enabled (config `fault_injection = true`), an
//! operator or test can kill a named actor at once, or arm it to panic or fail on its next
//! message, and then watch its supervisor restart it.

use std::sync::Arc;

use dashmap::DashMap;
use ractor::ActorProcessingErr;

/// What to do to an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Stop it now, mid-work (ractor's kill signal).
    Kill,
    /// Panic in its next message handler.
    Panic,
    /// Return an error from its next message handler.
    Error,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kill" => Some(Self::Kill),
            "panic" => Some(Self::Panic),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

/// Armed faults by actor name. Cheap to clone; disabled means every call is a no-op.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    armed: Option<Arc<DashMap<String, Fault>>>,
}

impl Faults {
    pub fn enabled() -> Self {
        Self { armed: Some(Arc::new(DashMap::new())) }
    }

    pub fn disabled() -> Self {
        Self { armed: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.armed.is_some()
    }

    /// Injects `fault` into the actor registered as `name`. False if disabled or no such
    /// actor.
    pub fn inject(&self, name: &str, fault: Fault) -> bool {
        let Some(armed) = &self.armed else { return false };
        let Some(cell) = ractor::registry::where_is(name) else { return false };
        match fault {
            Fault::Kill => cell.kill(),
            // Fires on the actor's next message (idle actors get periodic ticks).
            Fault::Panic | Fault::Error => {
                armed.insert(name.to_owned(), fault);
            }
        }
        true
    }

    /// Arms `fault` (panic or error) for the next message of the actor that will be
    /// registered as `name`, running or not (a hibernating session's next actor). False if
    /// disabled or `fault` is a kill.
    pub fn arm(&self, name: &str, fault: Fault) -> bool {
        let Some(armed) = &self.armed else { return false };
        if fault == Fault::Kill {
            return false;
        }
        armed.insert(name.to_owned(), fault);
        true
    }

    /// Called by actors first thing in every handler: fires an armed fault.
    pub fn check(&self, name: &str) -> Result<(), ActorProcessingErr> {
        let Some(armed) = &self.armed else { return Ok(()) };
        match armed.remove(name).map(|(_, f)| f) {
            Some(Fault::Panic) => panic!("fault injection: panic in {name}"),
            Some(Fault::Error) => Err(format!("fault injection: error in {name}").into()),
            _ => Ok(()),
        }
    }
}
