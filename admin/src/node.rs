//! The broker as one process: the data plane started with the admin plane beside it.
//!
//! [`start`] opens the admin plane's database, starts the data plane with the registry as its
//! control plane, then the admin thread (HTTP API, sweeper, samplers, alerts, rollouts).
//! [`Node`] is what admin code holds: the data plane's handle and the admin state.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;

use agentwire_broker::plane::DataPlane;
use agentwire_broker::server::{self, Parts, ServerHandle};
use agentwire_broker::Config;

use crate::store::StoreError;
use crate::Admin;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data plane did not start (configuration, listen address, TLS, threads).
    #[error(transparent)]
    Server(#[from] server::StartError),
    /// The admin plane's database cannot be opened.
    #[error("cannot open the data directory: {0}")]
    Store(#[from] StoreError),
    /// The admin API's address cannot be bound, or its thread cannot start.
    #[error("cannot start the admin plane: {0}")]
    Admin(std::io::Error),
}

/// The data plane and the admin state, as the admin plane's code sees them: derefs to the
/// data plane ([`DataPlane`]), [`Node::admin`] is the admin state.
pub struct Node {
    data: Arc<dyn DataPlane>,
    admin: Arc<Admin>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("server_id", &self.data.server_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Joins a running data plane and the admin state.
    pub fn new(data: Arc<dyn DataPlane>, admin: Arc<Admin>) -> Node {
        Node { data, admin }
    }

    /// The admin plane's state.
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The data plane.
    pub fn data(&self) -> &dyn DataPlane {
        &*self.data
    }

    /// The data plane, shared.
    pub fn data_arc(&self) -> Arc<dyn DataPlane> {
        self.data.clone()
    }
}

impl Deref for Node {
    type Target = dyn DataPlane;

    fn deref(&self) -> &Self::Target {
        &*self.data
    }
}

/// A running broker: the data plane's [`ServerHandle`] (deref) and the admin plane.
#[derive(Debug)]
pub struct Broker {
    server: ServerHandle,
    node: Arc<Node>,
    admin_addr: Option<SocketAddr>,
}

impl Deref for Broker {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.server
    }
}

impl Broker {
    /// The HTTP admin API's address, when configured (`admin.listen`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The data plane and the admin state.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Waits for every thread, the admin thread's included, to finish (after
    /// [`ServerHandle::shutdown`]).
    pub fn join(self) {
        self.server.join();
    }
}

/// Binds `config.listen` and starts the broker: the data plane and the admin plane.
///
/// # Errors
/// An invalid configuration, a data dir that cannot be opened, an address that cannot be
/// bound, or threads that cannot start.
pub fn start(config: Config) -> Result<Broker, StartError> {
    start_on(config, None)
}

/// [`start`] on an already bound client listener.
///
/// # Errors
/// As [`start`].
pub fn start_with_listener(
    config: Config,
    listener: std::net::TcpListener,
) -> Result<Broker, StartError> {
    start_on(config, Some(listener))
}

fn start_on(config: Config, listener: Option<std::net::TcpListener>) -> Result<Broker, StartError> {
    config.validate().map_err(server::StartError::from)?;
    let admin_tls = match &config.tls {
        Some(t) => Some(agentwire_broker::tls::admin_config(t).map_err(server::StartError::from)?),
        None => None,
    };
    let admin = Arc::new(Admin::new(&config)?);
    let parts = Parts {
        control: Some(admin.clone()),
    };
    let mut server = server::start_with(config, listener, parts)?;
    let node = Arc::new(Node::new(server.data_plane(), admin));
    let (thread, admin_addr) = crate::start_thread(node.clone(), server.stop_signal(), admin_tls)
        .map_err(|e| {
        server.shutdown();
        StartError::Admin(e)
    })?;
    server.adopt_thread(thread.thread);
    if let Some(a) = admin_addr {
        tracing::info!(%a, "admin API listening");
    }
    Ok(Broker {
        server,
        node,
        admin_addr,
    })
}
