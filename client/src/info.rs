//! What the server said about itself ([`ServerInfo`], from its INFO frame) and the counters of
//! one connection ([`Statistics`]).

/// What the server said about itself and this connection in its INFO frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// The server's id (unique per process start).
    pub server_id: String,
    /// The server's id for this connection.
    pub client_id: u64,
    /// The shard (event-loop thread) that owns this connection.
    pub shard_id: u16,
    /// How many shards the server runs.
    pub shard_count: u16,
    /// Largest headers + payload the server accepts in one message.
    pub max_payload: u32,
    /// The protocol version the server speaks.
    pub version: u16,
    /// Feature bits the server offers ([`agentwire_protocol::features`]).
    pub features: u32,
}

/// Counters of one connection since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statistics {
    /// Messages published (including requests).
    pub out_msgs: u64,
    /// Bytes written to the socket.
    pub out_bytes: u64,
    /// Write batches (each one `write_all` of everything buffered).
    pub writes: u64,
    /// MSG frames received.
    pub in_msgs: u64,
    /// Bytes read from the socket after the handshake.
    pub in_bytes: u64,
    /// Reads from the socket after the handshake.
    pub reads: u64,
}
