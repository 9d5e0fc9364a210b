//! agentwire-client (being written).
