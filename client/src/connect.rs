//! Opening a connection: [`ConnectOptions::connect`] and [`ConnectOptions::connect_servers`]
//! run the handshake, build the connection state and start its tasks, and hand back the
//! [`Client`].

use std::sync::Arc;

use crate::conn::{Inner, Reconnect, Settings};
use crate::error::Error;
use crate::handle::Client;
use crate::handshake;
use crate::options::ConnectOptions;
use crate::reconnect::Reconnector;
use crate::subject::new_inbox;
use crate::tasks::start_tasks;

impl ConnectOptions {
    /// Connects to the first address of [`ConnectOptions::servers`] that accepts the client,
    /// trying each once, in order (each bounded by the connect timeout).
    ///
    /// # Errors
    /// [`Error::NoServers`] when the list is empty; otherwise, when no address accepts the
    /// client, the error of the last one tried (as [`ConnectOptions::connect`]).
    pub async fn connect_servers(self) -> Result<Client, Error> {
        let servers = self.servers.clone();
        let mut last = Error::NoServers;
        for (index, addr) in servers.iter().enumerate() {
            match self.clone().connect_list(servers.clone(), index).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    tracing::debug!(addr = %addr, error = %e, "server did not accept the client; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Connects to `addr` (`host:port`) and completes the handshake.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::ConnectTimeout`] when the TCP connection cannot be opened,
    /// [`Error::Handshake`] when the server rejects the client or does not speak the protocol.
    pub async fn connect(self, addr: &str) -> Result<Client, Error> {
        let addrs = vec![addr.to_owned()];
        self.connect_list(addrs, 0).await
    }

    /// Connects to `addrs[index]`; `addrs` is the reconnect list.
    async fn connect_list(self, addrs: Vec<String>, index: usize) -> Result<Client, Error> {
        let addr = addrs.get(index).ok_or(Error::NoServers)?.clone();
        let (stream, info, leftover) = handshake::open(&self, &addr).await?;
        let settings = Settings {
            request_timeout: self.request_timeout,
            write_buffer_limit: self.write_buffer_limit,
            stamp_send_time: self.stamp_send_time,
            reconnect_buffer_size: self.reconnect_buffer_size,
            pending_limits: self.pending_limits,
            ping_interval: self.ping_interval,
            max_pings_out: self.max_pings_out,
            environment: self.environment.clone(),
        };
        let read_size = self.read_buffer_size;
        let reconnect = self
            .reconnect
            .then(|| Arc::new(Reconnector::new(self, addrs, index)) as Arc<dyn Reconnect>);
        let inner = Arc::new(Inner::new(info, settings, new_inbox(), reconnect, addr));
        start_tasks(&inner, stream, leftover, read_size, 0);
        Ok(Client::new(inner))
    }
}
