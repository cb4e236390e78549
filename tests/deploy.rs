//! What `deploy/` ships, as far as it can be checked without a docker engine or a cluster:
//!
//! * docker-compose.yml (issue 12.5): its init SQL creates an outbox table that `walrelay doctor` accepts and
//!   `walrelay run` relays; the compose file wires that SQL, the volumes and the /readyz health check.
//! * The container image (issue 22): the Dockerfile's runtime stage installs ca-certificates and runs as non-root.
//! * deploy/kubernetes (issue 22): every manifest validates with `kubernetes-validate --strict` against a pinned
//!   Kubernetes schema (a broken one fails); the Deployment runs two relays whose readiness a standby passes
//!   (/standbyz), locked down, with the ConfigMap's config loading as walrelay loads it and every credential file
//!   it names in the Secret.
//! * deploy/prometheus (issue 22): `promtool check rules` and the rules' unit tests pass (a broken rule and a changed
//!   threshold fail them); the alerts and deploy/grafana/walrelay.json use only metrics a real relay exports.
//!
//! The checkers come from `scripts/install-tools` (target/tools), which `scripts/test` and `.ci/run` run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use walrelay_tests::{
    http_get, insert_events, stream_messages, wait_stream_count,
    walrelay_testkit::{free_port, locate, Nats, Postgres},
    Env,
};

/// Kubernetes' schema version the manifests are validated against (kubernetes-validate's `-k`).
const KUBERNETES_VERSION: &str = "1.37.0";
/// The relay's peak RSS measured by `walrelay bench` (docs/benchmarks.md, "Where the targets stand": 19.3-23.3 MiB
/// over drain and live run): the Deployment's memory request must cover it.
const MEASURED_PEAK_RSS_BYTES: u64 = 23_300 * 1024 * 1024 / 1000;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A checker `scripts/install-tools` installs under target/tools, or the file `env` names.
fn tool(env: &str, installed: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| root().join("target/tools").join(installed));
    assert!(path.is_file(), "{} not found: run `bash scripts/install-tools` (or set {env})", path.display());
    path
}

fn kubernetes_validate() -> PathBuf {
    tool("WALRELAY_KUBERNETES_VALIDATE", "venv/bin/kubernetes-validate")
}

fn promtool() -> PathBuf {
    tool("WALRELAY_PROMTOOL", "bin/promtool")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let Output { status, stdout, stderr } = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (status.success(), format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

/// Every YAML document in `path` as JSON, read by the PyYAML that kubernetes-validate's venv holds.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let venv_python = kubernetes_validate().with_file_name("python3");
    let python = if venv_python.is_file() { venv_python } else { PathBuf::from("python3") };
    let script = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))";
    let (ok, out) = run(Command::new(python).args(["-c", script]).arg(path));
    assert!(ok, "reading {}: {out}", path.display());
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `files`: success and the output.
fn validate_manifests(files: &[PathBuf]) -> (bool, String) {
    run(Command::new(kubernetes_validate()).args(["--strict", "-k", KUBERNETES_VERSION]).args(files))
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
    let ignore = repo_file(".dockerignore");
    assert!(ignore.lines().any(|l| l == "target/") && ignore.lines().any(|l| l == "certs/"), "{ignore}");
}

/// The Dockerfile's stages, each a list of (instruction, arguments): continuation lines joined, comments dropped.
fn dockerfile_stages(text: &str) -> Vec<Vec<(String, String)>> {
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut line = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            line.push_str(head);
            line.push(' ');
            continue;
        }
        line.push_str(trimmed);
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(stage) = stages.last_mut() {
            stage.push((keyword, args.trim().to_owned()));
        }
        line.clear();
    }
    stages
}

/// The runtime (last) stage's user id, or what it lacks: a package install of ca-certificates (TLS to Postgres with
/// `sslrootcert=system` and to NATS with a public CA) and a final `USER` that is not root.
fn runtime_stage_user(dockerfile: &str) -> Result<u32, Vec<String>> {
    let stages = dockerfile_stages(dockerfile);
    let Some(runtime) = stages.last() else {
        return Err(vec!["no FROM".into()]);
    };
    let mut problems = Vec::new();
    let installs_ca = runtime.iter().filter(|(keyword, _)| keyword == "RUN").any(|(_, args)| {
        args.split("&&").flat_map(|command| command.split(';')).any(|command| {
            let words: Vec<&str> = command.split_whitespace().collect();
            let installs = words.windows(2).any(|w| w == ["apt-get", "install"] || w == ["apk", "add"]);
            installs && words.contains(&"ca-certificates")
        })
    });
    if !installs_ca {
        problems.push("the runtime stage installs no ca-certificates".to_owned());
    }
    let user = runtime.iter().rev().find(|(keyword, _)| keyword == "USER").map(|(_, args)| args.clone());
    let uid = match user.as_deref().map(|u| u.split(':').next().unwrap_or_default()) {
        None => {
            problems.push("the runtime stage sets no USER: it runs as root".to_owned());
            None
        }
        Some("root" | "0") => {
            problems.push(format!("the runtime stage's last USER is root ({})", user.unwrap_or_default()));
            None
        }
        Some(name) => match name.parse::<u32>() {
            Ok(uid) => Some(uid),
            Err(_) => {
                problems.push(format!("USER {name}: give a numeric uid, so Kubernetes' runAsNonRoot can check it"));
                None
            }
        },
    };
    match uid {
        Some(uid) if problems.is_empty() => Ok(uid),
        _ => Err(problems),
    }
}

#[test]
fn dockerfile_runtime_stage_has_ca_certificates_and_runs_as_non_root() {
    let dockerfile = repo_file("Dockerfile");
    assert_eq!(runtime_stage_user(&dockerfile), Ok(10001), "{dockerfile}");
    assert_eq!(dockerfile_stages(&dockerfile).len(), 2, "a build stage and a runtime stage");

    // The check fails where it should: ca-certificates only in the build stage, root, no USER.
    let build_only = dockerfile
        .replace("ca-certificates curl", "curl")
        .replace("RUN cargo build", "RUN apt-get update && apt-get install -y ca-certificates && cargo build");
    assert_eq!(runtime_stage_user(&build_only), Err(vec!["the runtime stage installs no ca-certificates".to_owned()]));
    let root_again = format!("{dockerfile}USER root\n");
    assert_eq!(runtime_stage_user(&root_again), Err(vec!["the runtime stage's last USER is root (root)".to_owned()]));
    let no_user = dockerfile.replace("USER 10001:10001", "");
    assert_eq!(runtime_stage_user(&no_user), Err(vec!["the runtime stage sets no USER: it runs as root".to_owned()]));
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate_and_broken_ones_fail() {
    let files = yaml_files(&root().join("deploy/kubernetes"));
    assert!(files.len() >= 6, "{files:?}");
    let (ok, out) = validate_manifests(&files);
    assert!(ok, "kubernetes-validate:\n{out}");
    assert_eq!(out.matches(" passed for resource ").count(), files.len(), "one resource per file:\n{out}");

    // A wrong type and a misspelt field (only --strict rejects unknown fields) both fail.
    let deployment = repo_file("deploy/kubernetes/deployment.yaml");
    let dir = tempfile::tempdir().unwrap();
    for (name, broken, error) in [
        ("replicas.yaml", deployment.replace("replicas: 2", "replicas: two"), "'two' is not of type 'integer'"),
        (
            "typo.yaml",
            deployment.replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),
            "'readOnlyRootFileSystem' was unexpected",
        ),
    ] {
        assert_ne!(broken, deployment);
        let path = dir.path().join(name);
        std::fs::write(&path, broken).unwrap();
        let (ok, out) = validate_manifests(&[path]);
        assert!(!ok && out.contains("did not validate") && out.contains(error), "{name} passed:\n{out}");
    }
}

/// The one resource of `kind` among `docs`.
fn resource<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

fn str_at<'a>(doc: &'a Value, pointer: &str) -> &'a str {
    doc.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{pointer} in {doc:#}"))
}

/// A Kubernetes quantity in bytes (`32Mi`, `1G`, `1000`).
fn bytes(quantity: &str) -> u64 {
    let units =
        [("Ki", 1u64 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("k", 1000), ("M", 1_000_000), ("G", 1_000_000_000)];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap() * factor;
        }
    }
    quantity.parse().unwrap()
}

/// A well-formed stand-in for the Secret's file `key`: a CA certificate for `.pem`, a `.creds` file (a user nkey
/// seed and a JWT-shaped block) for `.creds`, else a password.
fn credential_file(key: &str) -> String {
    if key.ends_with(".pem") {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    } else if key.ends_with(".creds") {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        format!(
            "-----BEGIN NATS USER JWT-----\naaa.bbb.ccc\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    } else {
        "placeholder\n".to_owned()
    }
}

#[test]
fn deployment_runs_an_active_relay_and_a_ready_standby_locked_down_with_its_config_and_secrets() {
    let docs: Vec<Value> =
        yaml_files(&root().join("deploy/kubernetes")).iter().flat_map(|f| yaml_documents(f)).collect();
    let deployment = resource(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(deployment["spec"]["selector"]["matchLabels"], *labels);

    // Two relays; a rollout starts a new pod (it stands by) before it stops an old one.
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"],
        serde_json::json!({"maxSurge": 1, "maxUnavailable": 0})
    );
    let pdb = resource(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    assert_eq!(resource(&docs, "Service")["spec"]["selector"], *labels);

    // Probes: live on /healthz, ready on /standbyz (200 on a standby), on the metrics port.
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(str_at(container, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(str_at(container, "/readinessProbe/httpGet/path"), "/standbyz");
    assert_eq!(str_at(container, "/readinessProbe/httpGet/port"), "metrics");
    assert_eq!(container["ports"][0]["name"], "metrics");

    // Locked down, as the image's own user.
    let uid = runtime_stage_user(&repo_file("Dockerfile")).unwrap();
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], uid);
    assert_eq!(str_at(pod, "/securityContext/seccompProfile/type"), "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], false);
    let locked = &container["securityContext"];
    assert_eq!(locked["allowPrivilegeEscalation"], false);
    assert_eq!(locked["readOnlyRootFilesystem"], true);
    assert_eq!(locked["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // Resources: the request covers the measured peak RSS; the limit leaves room above it.
    let request = bytes(str_at(container, "/resources/requests/memory"));
    let limit = bytes(str_at(container, "/resources/limits/memory"));
    assert!(request >= MEASURED_PEAK_RSS_BYTES && limit >= 4 * request, "request {request}, limit {limit}");

    // The config file: mounted from the ConfigMap where WALRELAY_CONFIG points.
    let configmap = resource(&docs, "ConfigMap");
    let secret = resource(&docs, "Secret");
    let volume = |name: &str| -> &Value {
        let volumes = pod["volumes"].as_array().unwrap();
        volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("volume {name}"))
    };
    let mount = |source: &str, name: &str| -> String {
        let mounts = container["volumeMounts"].as_array().unwrap();
        let v = mounts
            .iter()
            .find(|m| volume(str_at(m, "/name")).pointer(source).and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no mount of {source} {name}"));
        assert_eq!(v["readOnly"], true);
        str_at(v, "/mountPath").to_owned()
    };
    let config_dir = mount("/configMap/name", str_at(configmap, "/metadata/name"));
    let secrets_dir = mount("/secret/secretName", str_at(secret, "/metadata/name"));
    let env = container["env"].as_array().unwrap();
    let config_path = env.iter().find(|e| e["name"] == "WALRELAY_CONFIG").map(|e| str_at(e, "/value")).unwrap();
    let file_name = config_path.strip_prefix(&format!("{config_dir}/")).expect("WALRELAY_CONFIG in the mount");
    let toml = str_at(configmap, &format!("/data/{file_name}"));

    // Every credential file the config names is a key of the Secret, and every key is named.
    let prefix = format!("{secrets_dir}/");
    let named: BTreeSet<String> = toml
        .match_indices(&prefix)
        .map(|(at, _)| toml[at + prefix.len()..].chars().take_while(|c| !matches!(c, '"' | '&' | '?')).collect())
        .collect();
    let keys: BTreeSet<String> = secret["stringData"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(named, keys, "files the config names under {secrets_dir} vs the Secret's keys");
    assert!(keys.contains("pg-password") && keys.contains("nats.creds"), "{keys:?}");

    // The config loads as walrelay loads it (the password file is read then), with the files in place.
    let dir = tempfile::tempdir().unwrap();
    for key in &keys {
        std::fs::write(dir.path().join(key), credential_file(key)).unwrap();
    }
    let local = toml.replace(&prefix, &format!("{}/", dir.path().display()));
    let path = dir.path().join(file_name);
    std::fs::write(&path, local).unwrap();
    let settings = walrelay_core::config::Settings::load(Some(&path), &serde_json::json!({}))
        .unwrap_or_else(|e| panic!("{file_name} from the ConfigMap: {e}"));
    let metrics = settings.metrics_addr.expect("metrics_addr: the probes need it");
    assert_eq!(container["ports"][0]["containerPort"], metrics.port());
    assert!(metrics.ip().is_unspecified(), "the kubelet probes the pod's address: {metrics}");

    // SIGTERM: the relay waits shutdown_timeout for acks, then confirms; Kubernetes waits longer before SIGKILL.
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        grace >= settings.shutdown_timeout + Duration::from_secs(10),
        "{grace:?} vs {:?}",
        settings.shutdown_timeout
    );
}

/// Runs `promtool <args>` in `dir`.
fn promtool_in(dir: &Path, args: &[&str]) -> (bool, String) {
    run(Command::new(promtool()).current_dir(dir).args(args))
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests_and_broken_ones_fail() {
    let dir = root().join("deploy/prometheus");
    let (ok, out) = promtool_in(&dir, &["check", "rules", "alerts.yml"]);
    assert!(ok && out.contains("SUCCESS: 10 rules found"), "promtool check rules:\n{out}");
    let (ok, out) = promtool_in(&dir, &["test", "rules", "alerts_test.yml"]);
    assert!(ok && out.contains("SUCCESS"), "promtool test rules:\n{out}");

    // Every alert has a test where it fires, and the healthy relay (the first test) checks that none fires.
    let alerts: BTreeSet<String> = yaml_documents(&dir.join("alerts.yml"))[0]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| str_at(rule, "/alert").to_owned())
        .collect();
    let tests = yaml_documents(&dir.join("alerts_test.yml"))[0]["tests"].as_array().unwrap().clone();
    let cases = |test: &Value| -> Vec<(String, bool)> {
        let cases = test["alert_rule_test"].as_array().unwrap();
        cases
            .iter()
            .map(|c| (str_at(c, "/alertname").to_owned(), !c["exp_alerts"].as_array().unwrap().is_empty()))
            .collect()
    };
    let fired: BTreeSet<String> = tests.iter().flat_map(cases).filter(|(_, fires)| *fires).map(|(a, _)| a).collect();
    assert_eq!(fired, alerts, "alerts with a test that trips them");
    let healthy = cases(&tests[0]);
    assert!(healthy.iter().all(|(_, fires)| !fires));
    assert_eq!(healthy.into_iter().map(|(a, _)| a).collect::<BTreeSet<_>>(), alerts, "quiet on a healthy relay");

    // Broken copies fail: a rule that no longer parses, and a rule whose `for` changed under its test.
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let scratch = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("alerts_test.yml"), scratch.path().join("alerts_test.yml")).unwrap();
    let not_streaming = "(walrelay_ready{job=\"walrelay\"}) == 0\n        for: 5m";
    assert!(rules.contains(not_streaming));
    std::fs::write(
        scratch.path().join("alerts.yml"),
        rules.replace(not_streaming, "(walrelay_ready{job=\"walrelay\"}) ==\n        for: 5m"),
    )
    .unwrap();
    let (ok, out) = promtool_in(scratch.path(), &["check", "rules", "alerts.yml"]);
    assert!(!ok && out.contains("FAILED"), "a broken expression passed promtool check rules:\n{out}");
    let later = not_streaming.replace("for: 5m", "for: 10m");
    std::fs::write(scratch.path().join("alerts.yml"), rules.replace(not_streaming, &later)).unwrap();
    let (ok, out) = promtool_in(scratch.path(), &["test", "rules", "alerts_test.yml"]);
    assert!(!ok && out.contains("alertname: WalrelayNotStreaming"), "a changed rule passed its tests:\n{out}");
}

/// Every `walrelay_*` name in `text` (PromQL in rules and panels, and names in their descriptions).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("walrelay_") {
        if text[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        names.insert(name);
    }
    names
}

/// The names of the samples in a Prometheus exposition (`name{labels} value` or `name value`).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The names in `used` that `exported` lacks: a name with `_bucket`, `_sum` or `_count` must be exported as it is
/// (a histogram rendered as a summary has no `_bucket`); a family's bare name (in a description) by any series.
fn missing(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    let families: BTreeSet<&str> = exported
        .iter()
        .map(|n| ["_bucket", "_sum", "_count"].iter().find_map(|s| n.strip_suffix(s)).unwrap_or(n))
        .collect();
    used.iter().filter(|n| !exported.contains(*n) && !families.contains(n.as_str())).cloned().collect()
}

/// The deploy/ files that reference metrics and the names each uses.
fn metrics_used() -> BTreeMap<&'static str, BTreeSet<String>> {
    ["deploy/prometheus/alerts.yml", "deploy/grafana/walrelay.json"]
        .into_iter()
        .map(|file| (file, metric_names(&repo_file(file))))
        .collect()
}

#[test]
fn dashboard_is_json_with_a_query_per_panel() {
    let dashboard: Value = serde_json::from_str(&repo_file("deploy/grafana/walrelay.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|p| {
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
            targets.iter().map(|t| str_at(t, "/expr"))
        })
        .collect();
    assert!(queries.len() >= 12, "{queries:?}");
    assert!(queries.iter().all(|q| q.contains("walrelay_") && q.contains("job=\"$job\"")), "{queries:?}");
    assert_eq!(
        metric_names("x{a} walrelay_a_total 1 (walrelay_b_bucket[5m]) my_walrelay_c"),
        ["walrelay_a_total".to_owned(), "walrelay_b_bucket".to_owned()].into()
    );
}

/// ATTENTION, merge: on branch issue-22 alone this test FAILS, by design: alerts.yml and walrelay.json use the
/// metrics of design.md §4g that issues 18, 19 and 21 add in parallel (walrelay_ready, walrelay_acked_lsn,
/// walrelay_slot_retained_bytes, walrelay_slot_safe_wal_size_bytes, walrelay_commit_to_ack_seconds_*,
/// walrelay_build_info, walrelay_nats_connected, walrelay_slot_invalidated, walrelay_durability_pending_events,
/// walrelay_batched_publishes_total). After the merge it must pass; its message lists what is still missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_use_only_metrics_walrelay_exports() {
    // A limited max_slot_wal_keep_size, so that walrelay_slot_safe_wal_size_bytes exists; a current nats-server
    // (fast-batch publishing); --prune-after registers walrelay_rows_pruned_total.
    let pg = Postgres::builder().setting("max_slot_wal_keep_size", "1GB").start().unwrap();
    let nats = Nats::builder().bin(locate::nats_server_new().unwrap()).start().unwrap();
    let env = Env::with(pg, nats);
    env.setup();
    let addr = format!("127.0.0.1:{}", free_port());
    let relay = env.spawn_run(&["--metrics-addr", &addr, "--prune-after", "1h"]);
    let ids = insert_events(&env.client().await, "metrics", 0, 2).await;
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 2, Duration::from_secs(60)).await;
    assert_eq!(stream_messages(&js, &env.stream).await.iter().map(|m| m.id().to_owned()).collect::<Vec<_>>(), ids);

    // Gauges fed by the slot's status appear after the first refresh (--progress-interval 1s): poll for a while.
    let used = metrics_used();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (exposition, gaps) = loop {
        let (code, exposition) = http_get(&addr, "/metrics").expect("/metrics answers");
        assert_eq!(code, 200);
        let exported = exported_names(&exposition);
        let gaps: BTreeMap<&str, Vec<String>> = used
            .iter()
            .map(|(file, names)| (*file, missing(names, &exported)))
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if gaps.is_empty() || Instant::now() > deadline {
            break (exposition, gaps);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    relay.sigterm().unwrap();
    assert_eq!(relay.wait_timeout(Duration::from_secs(30)).unwrap().and_then(|s| s.code()), Some(0));
    assert!(
        gaps.is_empty(),
        "metrics used by deploy/ but not exported by walrelay run (expected on branch issue-22 before the merge of \
         issues 18, 19 and 21): {gaps:#?}\n/metrics:\n{exposition}"
    );
    assert!(used.values().all(|names| names.len() >= 8), "{used:?}");
}
