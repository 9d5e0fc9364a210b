//! The commands that act on the broker as a whole: `optimize`, `drain` (lame duck) and
//! `reload` (re-read the config file).

use std::process::ExitCode;

use serde_json::json;

use super::api::{call, finish, AdminTarget};
use super::output::print_json;

/// `agentwire optimize`.
pub(crate) fn optimize(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("POST", &t, "/api/v1/system/optimize", Some(json!({})))?;
        print_json(&v);
        Ok(())
    })())
}

/// `agentwire drain`: lame duck through the admin API.
pub(crate) fn drain(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("POST", &t, "/api/v1/system/lameduck", Some(json!({})))?;
        if t.json {
            print_json(&v);
        } else {
            println!(
                "lame duck: no new connections; {} client(s) move away within {} ms, then the broker exits",
                v["connections"], v["window_ms"]
            );
        }
        Ok(())
    })())
}

/// `agentwire reload`: the broker re-reads its config file and applies users and limits.
pub(crate) fn reload(t: AdminTarget) -> ExitCode {
    finish((|| {
        let v = call("POST", &t, "/api/v1/system/reload", Some(json!({})))?;
        if t.json {
            print_json(&v);
        } else {
            println!("reloaded: {} user(s)", v["users"]);
            if let Some(l) = v["needs_restart"].as_array().filter(|l| !l.is_empty()) {
                println!("changed but applied only on restart: {l:?}");
            }
        }
        Ok(())
    })())
}
