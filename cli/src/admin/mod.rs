//! The admin commands of `agentwire`: `status`, `components [NAME|--graph]`, `config
//! get|set|history|rollback|promote|rollout`, `top`, `optimize`, `deployment`, `alerts`. Each is a call to the broker's HTTP admin API (`--admin
//! ADDR`, default 127.0.0.1:8480, or `AGENTWIRE_ADMIN`), printed for a person or, with
//! `--json`, as the API's JSON.
//!
//! [`api`] holds the HTTP plumbing (target, auth, TLS, the call and its failure), [`output`]
//! the text forms, and the commands are in [`status`], [`control`], [`config`] and
//! [`rollout`].

mod api;
mod config;
mod control;
mod output;
mod rollout;
mod status;

pub(crate) use api::{AdminTarget, DEFAULT_ADMIN};
pub(crate) use config::{config, ConfigArgs};
pub(crate) use control::{drain, optimize, reload};
pub(crate) use status::{
    alerts, components, dashboard, deployment, status, top, AlertsArgs, ComponentsArgs, TopArgs,
};
