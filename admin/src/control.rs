//! The registry as the data plane's control plane: what a shard's REGISTER, HEARTBEAT,
//! DEREGISTER and DISCOVER (already decoded and validated by the shard) do to the registry,
//! and the `$SYS.components.*` events they publish. Runs on the shard's thread: no I/O here
//! (the database write of a new component goes to the admin thread).

use std::sync::Arc;

use agentwire_broker::plane::{ConnRef, ControlPlane, DataPlane, Refusal};
use agentwire_broker::telemetry::load::ConnLoad;
use agentwire_protocol::control::{Discover, Heartbeat, InstanceInfo, Registered, Registration};

use crate::registry::Event;
use crate::{publish_events, Admin};

impl ControlPlane for Admin {
    fn register(
        &self,
        data: &dyn DataPlane,
        at: ConnRef,
        reg: &Registration,
        load: Arc<ConnLoad>,
    ) -> Result<Registered, Refusal> {
        let env = self.registry.environment_of(reg).to_owned();
        let (info, config) = self
            .registry
            .register(at, reg, load, || self.config_for(&reg.component, &env))?;
        let policy = self.registry.policy();
        let ack = Registered {
            instance_id: info.instance_id.clone(),
            heartbeat_ms: policy.interval.as_millis().min(u128::from(u32::MAX)) as u32,
            unhealthy_after: policy.unhealthy_after,
            remove_after: policy.remove_after,
            config,
        };
        // Record the component in the database on the admin thread (a disk write).
        self.note_component(&info.component);
        publish_events(data, vec![Event::Joined(info)]);
        Ok(ack)
    }

    fn heartbeat(&self, data: &dyn DataPlane, conn: u64, hb: &Heartbeat) -> Result<(), Refusal> {
        if let Some(ev) = self.registry.heartbeat(conn, hb)? {
            publish_events(data, vec![ev]);
        }
        Ok(())
    }

    fn deregister(&self, data: &dyn DataPlane, conn: u64, why: &'static str) -> bool {
        match self.registry.deregister(conn, why) {
            Some(ev) => {
                publish_events(data, vec![ev]);
                true
            }
            None => false,
        }
    }

    fn discover(&self, q: &Discover) -> Vec<InstanceInfo> {
        self.registry
            .list(&q.component, &q.capability, q.include_unhealthy)
    }
}
