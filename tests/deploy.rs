//! The example deployment (docker-compose.yml, issue 12.5) as far as it can be checked without a docker engine:
//! its init SQL creates an outbox table that `walrelay doctor` accepts and `walrelay run` relays, and the compose
//! file wires that SQL, the volumes and the /readyz health check.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{path::Path, time::Duration};

use walrelay_tests::{
    insert_events, stream_messages, wait_stream_count,
    walrelay_testkit::{Nats, Postgres},
    Env,
};

fn repo_file(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_sql_creates_an_outbox_that_doctor_accepts_and_run_relays() {
    let pg = Postgres::start().unwrap();
    pg.psql(&repo_file("deploy/init-outbox.sql")).unwrap();
    let env = Env { pg, nats: Nats::start().unwrap(), stream: "OUTBOX".into(), slot: "walrelay".into() };
    env.setup();
    let out = env.walrelay(&["doctor"]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "doctor: {report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("public.outbox has 7 columns"), "{report}");
    let relay = env.spawn_run(&[]);
    let ids = insert_events(&env.client().await, "compose", 0, 3).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 3, Duration::from_secs(60)).await;
    let got: Vec<String> = stream_messages(&js, &env.stream).await.iter().map(|m| m.id().to_owned()).collect();
    assert_eq!(got, ids);
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(Duration::from_secs(30)).unwrap().and_then(|s| s.code()), Some(0));
}

#[test]
fn compose_file_wires_init_sql_volumes_and_readiness() {
    let compose = repo_file("docker-compose.yml");
    for needed in [
        "./deploy/init-outbox.sql:/docker-entrypoint-initdb.d/",
        "pgdata:/var/lib/postgresql/data",
        "jetstream:/data",
        "http://127.0.0.1:9187/readyz",
        "WALRELAY_METRICS_ADDR: 0.0.0.0:9187",
        "condition: service_healthy",
    ] {
        assert!(compose.contains(needed), "docker-compose.yml lacks {needed}");
    }
    let dockerfile = repo_file("Dockerfile");
    assert!(dockerfile.contains("ca-certificates") && dockerfile.contains("\nUSER "), "{dockerfile}");
    let ignore = repo_file(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/") && ignore.lines().any(|l| l == "certs/"), "{ignore}");
}
