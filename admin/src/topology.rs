//! Component status from the live instances and their declared dependencies (`depends_on`):
//! per component `healthy`, `degraded` or `unhealthy`, the dependency problems behind it, and
//! the dependency graph for the dashboard.
//!
//! A dependency is checked among the live instances of the dependency *in the same environment*
//! as the instances that declare it:
//! - `missing`: no live instance at all;
//! - `unhealthy`: live instances, none healthy (or none of the version-compatible ones healthy);
//! - `incompatible`: live instances, none whose `version` (semver; unparsable = incompatible)
//!   meets the declared range.
//!
//! `missing` and `unhealthy` make the component `degraded`; `incompatible` is flagged
//! (`incompatible: true`) without changing the status. A component none of whose instances is
//! healthy is `unhealthy` whatever its dependencies. Pure functions of a registry listing, so
//! they are unit-tested here without a broker.

use std::collections::{BTreeMap, BTreeSet};

use agentwire_protocol::control::{Dependency, InstanceInfo};
use serde::Serialize;

/// What is wrong with one declared dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    /// No live instance of the dependency in the environment.
    Missing,
    /// Live instances, but none (of those with a compatible version) healthy.
    Unhealthy,
    /// Live instances, none whose version meets the declared range.
    Incompatible,
}

/// One unmet dependency of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DependencyProblem {
    /// The component depended on.
    pub dependency: String,
    /// The environment where it is unmet.
    pub environment: String,
    /// What is wrong.
    pub problem: Problem,
    /// The declared range (`*`: any version).
    pub wanted: String,
    /// Versions of the dependency's live instances there (sorted, distinct).
    pub found_versions: Vec<String>,
}

/// Overall status of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every instance healthy and every dependency met (incompatible versions aside).
    Healthy,
    /// Some instance unhealthy, or a dependency missing or unhealthy.
    Degraded,
    /// No healthy instance.
    Unhealthy,
    /// Depended on, but no live instance (graph nodes only).
    Missing,
}

impl Status {
    /// The status as its JSON string.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Unhealthy => "unhealthy",
            Status::Missing => "missing",
        }
    }
}

/// One component as the status pages show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentStatus {
    /// Component name.
    pub name: String,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: Status,
    /// Live instances.
    pub instances: usize,
    /// Of those, healthy.
    pub healthy_instances: usize,
    /// Distinct versions of the live instances.
    pub versions: BTreeSet<String>,
    /// Environments of the live instances.
    pub environments: BTreeSet<String>,
    /// Mean health score of the instances.
    pub health_score: u64,
    /// Latest heartbeat of any instance, ms since the epoch.
    pub last_updated_ms: u64,
    /// Declared dependencies (union over the instances, as written).
    pub depends_on: BTreeSet<String>,
    /// Unmet dependencies.
    pub dependency_problems: Vec<DependencyProblem>,
    /// Some dependency has live instances but none of a compatible version.
    pub incompatible: bool,
}

/// A node of the dependency graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Component name.
    pub component: String,
    /// Its status (`missing` for a dependency with no live instance).
    pub status: Status,
    /// Distinct versions of its live instances.
    pub versions: BTreeSet<String>,
}

/// An edge of the dependency graph: `from` declares a dependency on `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    /// The dependent component.
    pub from: String,
    /// The component depended on.
    pub to: String,
    /// The declared range (`*`: any version).
    pub requirement: String,
    /// Met in every environment where it is declared.
    pub ok: bool,
}

/// The dependency graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    /// Live components and the dependencies they name, sorted by name.
    pub nodes: Vec<Node>,
    /// Declared dependencies, sorted.
    pub edges: Vec<Edge>,
}

/// Checks one dependency in one environment; `None` when met.
fn check(
    dep: &Dependency,
    environment: &str,
    instances: &[&InstanceInfo],
) -> Option<DependencyProblem> {
    let live: Vec<&&InstanceInfo> = instances
        .iter()
        .filter(|i| i.component == dep.component && i.environment == environment)
        .collect();
    let found_versions = live
        .iter()
        .map(|i| i.version.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let problem = if live.is_empty() {
        Problem::Missing
    } else if !live.iter().any(|i| i.healthy) {
        Problem::Unhealthy
    } else {
        let compatible: Vec<_> = live.iter().filter(|i| dep.accepts(&i.version)).collect();
        if compatible.is_empty() {
            Problem::Incompatible
        } else if !compatible.iter().any(|i| i.healthy) {
            Problem::Unhealthy
        } else {
            return None;
        }
    };
    Some(DependencyProblem {
        dependency: dep.component.clone(),
        environment: environment.to_owned(),
        problem,
        wanted: dep.wanted(),
        found_versions,
    })
}

/// Status of every component with live instances, sorted by name.
pub fn evaluate(instances: &[InstanceInfo]) -> Vec<ComponentStatus> {
    let all: Vec<&InstanceInfo> = instances.iter().collect();
    let mut by_component: BTreeMap<&str, Vec<&InstanceInfo>> = BTreeMap::new();
    for i in instances {
        by_component.entry(&i.component).or_default().push(i);
    }
    by_component
        .into_iter()
        .map(|(name, list)| {
            let healthy = list.iter().filter(|i| i.healthy).count();
            // Declared entries per environment (an instance's entries apply where it lives).
            let mut declared: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for i in &list {
                let e = declared.entry(i.environment.as_str()).or_default();
                e.extend(i.depends_on.iter().map(String::as_str));
            }
            let mut problems = Vec::new();
            for (env, entries) in &declared {
                for entry in entries {
                    // Registrations are validated; an entry that does not parse is skipped.
                    if let Ok(dep) = Dependency::parse(entry) {
                        problems.extend(check(&dep, env, &all));
                    }
                }
            }
            let blocking = problems
                .iter()
                .any(|p| matches!(p.problem, Problem::Missing | Problem::Unhealthy));
            let status = if healthy == 0 {
                Status::Unhealthy
            } else if healthy < list.len() || blocking {
                Status::Degraded
            } else {
                Status::Healthy
            };
            ComponentStatus {
                name: name.to_owned(),
                status,
                instances: list.len(),
                healthy_instances: healthy,
                versions: list.iter().map(|i| i.version.clone()).collect(),
                environments: list.iter().map(|i| i.environment.clone()).collect(),
                health_score: list.iter().map(|i| u64::from(i.health_score)).sum::<u64>()
                    / list.len().max(1) as u64,
                last_updated_ms: list.iter().map(|i| i.last_seen_ms).max().unwrap_or(0),
                depends_on: list
                    .iter()
                    .flat_map(|i| i.depends_on.iter().cloned())
                    .collect(),
                incompatible: problems.iter().any(|p| p.problem == Problem::Incompatible),
                dependency_problems: problems,
            }
        })
        .collect()
}

/// The dependency graph of the live instances: a node per live component and per component
/// depended on (`missing` when it has no live instance), an edge per distinct declared
/// (dependent, dependency, range), `ok` when met in every environment that declares it.
pub fn graph(instances: &[InstanceInfo]) -> Graph {
    let statuses = evaluate(instances);
    let mut nodes: BTreeMap<String, Node> = statuses
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                Node {
                    component: s.name.clone(),
                    status: s.status,
                    versions: s.versions.clone(),
                },
            )
        })
        .collect();
    let mut edges: BTreeMap<(String, String, String), bool> = BTreeMap::new();
    for s in &statuses {
        for entry in &s.depends_on {
            let Ok(dep) = Dependency::parse(entry) else {
                continue;
            };
            nodes.entry(dep.component.clone()).or_insert_with(|| Node {
                component: dep.component.clone(),
                status: Status::Missing,
                versions: BTreeSet::new(),
            });
            let wanted = dep.wanted();
            let ok = !s
                .dependency_problems
                .iter()
                .any(|p| p.dependency == dep.component && p.wanted == wanted);
            let e = edges
                .entry((s.name.clone(), dep.component.clone(), wanted))
                .or_insert(true);
            *e &= ok;
        }
    }
    Graph {
        nodes: nodes.into_values().collect(),
        edges: edges
            .into_iter()
            .map(|((from, to, requirement), ok)| Edge {
                from,
                to,
                requirement,
                ok,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(c: &str, id: &str, version: &str, healthy: bool, deps: &[&str]) -> InstanceInfo {
        InstanceInfo {
            component: c.into(),
            instance_id: id.into(),
            version: version.into(),
            environment: "default".into(),
            healthy,
            health_score: if healthy { 100 } else { 10 },
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            ..InstanceInfo::default()
        }
    }

    fn find<'a>(s: &'a [ComponentStatus], name: &str) -> &'a ComponentStatus {
        s.iter().find(|c| c.name == name).expect("listed")
    }

    #[test]
    fn missing_dependency_degrades_then_healthy_when_it_arrives() {
        let mut list = vec![inst(
            "planner",
            "p0",
            "1.0.0",
            true,
            &["memory@^1.2", "llm"],
        )];
        let s = evaluate(&list);
        let p = find(&s, "planner");
        assert_eq!(p.status, Status::Degraded);
        assert_eq!(p.dependency_problems.len(), 2);
        assert!(p
            .dependency_problems
            .iter()
            .all(|d| d.problem == Problem::Missing && d.found_versions.is_empty()));
        assert!(!p.incompatible);
        list.push(inst("memory", "m0", "1.4.0", true, &[]));
        list.push(inst("llm", "l0", "anything", true, &[]));
        let s = evaluate(&list);
        assert_eq!(find(&s, "planner").status, Status::Healthy);
        assert!(find(&s, "planner").dependency_problems.is_empty());
    }

    #[test]
    fn unhealthy_dependency_degrades() {
        let list = vec![
            inst("planner", "p0", "1.0.0", true, &["memory"]),
            inst("memory", "m0", "1.4.0", false, &[]),
        ];
        let s = evaluate(&list);
        let p = find(&s, "planner");
        assert_eq!(p.status, Status::Degraded);
        assert_eq!(p.dependency_problems[0].problem, Problem::Unhealthy);
        assert_eq!(p.dependency_problems[0].found_versions, vec!["1.4.0"]);
        assert_eq!(find(&s, "memory").status, Status::Unhealthy);
    }

    #[test]
    fn incompatible_versions_are_flagged_not_degraded() {
        let list = vec![
            inst("planner", "p0", "1.0.0", true, &["memory@>=1.2, <2"]),
            inst("memory", "m0", "2.1.0", true, &[]),
            inst("memory", "m1", "latest", true, &[]),
        ];
        let s = evaluate(&list);
        let p = find(&s, "planner");
        assert_eq!(p.status, Status::Healthy);
        assert!(p.incompatible);
        let d = &p.dependency_problems[0];
        assert_eq!(d.problem, Problem::Incompatible);
        assert_eq!(d.wanted, ">=1.2, <2");
        assert_eq!(d.found_versions, vec!["2.1.0", "latest"]);
        // One compatible instance is enough, but it must be healthy.
        let mut list = list;
        list.push(inst("memory", "m2", "1.5.0", false, &[]));
        let s = evaluate(&list);
        let p = find(&s, "planner");
        assert_eq!(p.dependency_problems[0].problem, Problem::Unhealthy);
        assert_eq!(p.status, Status::Degraded);
        list.push(inst("memory", "m3", "1.5.1", true, &[]));
        assert!(find(&evaluate(&list), "planner")
            .dependency_problems
            .is_empty());
    }

    #[test]
    fn dependencies_are_met_in_the_same_environment_only() {
        let mut memory = inst("memory", "m0", "1.4.0", true, &[]);
        memory.environment = "prod".into();
        let list = vec![inst("planner", "p0", "1.0.0", true, &["memory"]), memory];
        let s = evaluate(&list);
        let d = &find(&s, "planner").dependency_problems[0];
        assert_eq!(
            (d.problem, d.environment.as_str()),
            (Problem::Missing, "default")
        );
    }

    #[test]
    fn own_instances_decide_unhealthy_and_degraded() {
        let list = vec![
            inst("planner", "p0", "1.0.0", true, &[]),
            inst("planner", "p1", "1.0.0", false, &[]),
            inst("worker", "w0", "1.0.0", false, &["planner"]),
        ];
        let s = evaluate(&list);
        assert_eq!(find(&s, "planner").status, Status::Degraded);
        assert_eq!(find(&s, "worker").status, Status::Unhealthy);
        assert_eq!(find(&s, "planner").health_score, 55);
    }

    #[test]
    fn graph_has_missing_nodes_and_edge_states() {
        let list = vec![
            inst("planner", "p0", "1.0.0", true, &["memory@^1.2", "llm"]),
            inst("memory", "m0", "1.1.0", true, &[]),
        ];
        let g = graph(&list);
        let names: Vec<_> = g.nodes.iter().map(|n| n.component.as_str()).collect();
        assert_eq!(names, vec!["llm", "memory", "planner"]);
        assert_eq!(g.nodes[0].status, Status::Missing);
        assert_eq!(g.edges.len(), 2);
        assert!(g.edges.iter().all(|e| e.from == "planner" && !e.ok));
        let e = g.edges.iter().find(|e| e.to == "memory").expect("edge");
        assert_eq!(e.requirement, "^1.2");
        let v = serde_json::to_value(&g).expect("json");
        assert_eq!(v["nodes"][0]["status"], "missing");
        assert_eq!(v["edges"][0]["ok"], false);
    }
}
