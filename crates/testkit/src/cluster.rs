//! A throwaway nats-server cluster with JetStream on loopback: nodes `n1..nN`, each with its own store, routes to
//! all others on free ports (<https://docs.nats.io/running-a-nats-service/configuration/clustering>).

use std::collections::HashSet;
use std::time::Duration;

use crate::nats::ClusterSpec;
use crate::{net, wait_until, KitError, Nats, NatsBuilder};

/// How long to wait for all nodes to be healthy and routed to each other.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// The cluster name in every node's configuration.
pub const CLUSTER_NAME: &str = "walrelay";

/// N nats-server nodes with JetStream forming one cluster. Each node is a [`Nats`], so
/// [`Nats::kill9`]/[`Nats::start_again`] on [`NatsCluster::node`] inject node failures.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, `n1` first.
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    /// Starts `n` nodes with default settings and waits until the cluster has formed.
    pub fn start(n: usize) -> Result<NatsCluster, KitError> {
        Self::start_with(n, NatsBuilder::default())
    }

    /// Starts `n` nodes configured like `template` (executable, `max_payload`, extra configuration; the server
    /// name is replaced by `n1..nN`) and waits until the cluster has formed.
    pub fn start_with(n: usize, template: NatsBuilder) -> Result<NatsCluster, KitError> {
        let cluster_ports: Vec<u16> = (0..n).map(|_| net::free_port()).collect();
        let mut nodes = Vec::with_capacity(n);
        for (i, &port) in cluster_ports.iter().enumerate() {
            let mut builder = template.clone().server_name(format!("n{}", i + 1));
            builder.cluster = Some(ClusterSpec {
                name: CLUSTER_NAME.into(),
                port,
                routes: cluster_ports.iter().copied().filter(|&other| other != port).collect(),
            });
            nodes.push(builder.prepare()?);
        }
        // Clustered JetStream is healthy only with a quorum, so start every node before waiting on any.
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_ready()?;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_formed(FORM_TIMEOUT)?;
        Ok(cluster)
    }

    /// The client URLs of all nodes, comma-separated (the nats CLI's `--server` form).
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    /// The client URLs of all nodes, one per node (`async_nats::connect` takes a slice of them).
    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(Nats::url).collect()
    }

    /// Node `i`, counting from 0 (`node(0)` is `n1`).
    ///
    /// # Panics
    /// When `i` is not less than the number of nodes.
    pub fn node(&mut self, i: usize) -> &mut Nats {
        &mut self.nodes[i]
    }

    /// Waits until every node answers `/healthz` and is routed to all other nodes (`/routez`).
    pub fn wait_formed(&self, timeout: Duration) -> Result<(), KitError> {
        let others = self.nodes.len().saturating_sub(1);
        wait_until("the NATS cluster to form", timeout, || {
            self.nodes.iter().all(|node| node.monitor("/healthz").is_ok() && routed_peers(node) >= others).then_some(())
        })
    }
}

/// How many distinct servers `node` has routes to (2.10+ pools several connections per peer).
fn routed_peers(node: &Nats) -> usize {
    let Ok(body) = node.monitor("/routez") else {
        return 0;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&body) else {
        return 0;
    };
    let peers: HashSet<&str> = json
        .get("routes")
        .and_then(|routes| routes.as_array())
        .map(|routes| routes.iter().filter_map(|route| route.get("remote_id")?.as_str()).collect())
        .unwrap_or_default();
    peers.len()
}
