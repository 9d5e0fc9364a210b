//! agentwire-broker (being written).
