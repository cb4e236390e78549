//! Connecting to Postgres as production servers demand (issue 8, design.md §4a): TLS in every sslmode against a
//! server whose pg_hba.conf holds only `hostssl` lines, client-certificate authentication, a password from a file,
//! authentication failures that end every command at once, and multi-host URLs. Certificates are made here.
//! Every test greps all it captured for the secrets it used.
#![allow(clippy::unwrap_used, missing_docs)]

use std::{
    process::Command,
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use walrelay_tests::{
    stream_messages, wait_stream_count,
    walrelay_testkit::{free_port, walrelay_bin, Nats, Postgres, Process, ServerTls},
    Env, OUTBOX_DDL,
};

const LONG: Duration = Duration::from_secs(120);
/// design.md §4a: an authentication failure ends every command within 30 s.
const AUTH_DEADLINE: Duration = Duration::from_secs(30);
const PASSWORD: &str = "s3cret-Pg-7f2e9c";
const WRONG_PASSWORD: &str = "wr0ng-Pg-91ab4d";

/// A CA and what it signed, written as PEM files into a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server_tls: ServerTls,
    /// Private key PEMs, to grep for.
    keys: Vec<String>,
}

fn make_ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(sans: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose, ca: &(Certificate, KeyPair)) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &ca.0, &ca.1).unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// A test CA, a server certificate for localhost/127.0.0.1, a client certificate for `relay`, another CA.
    fn new() -> Pki {
        Pki::for_server(&["localhost", "127.0.0.1"])
    }

    /// The same with a server certificate naming `names`.
    fn for_server(names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("walrelay test CA");
        let other = make_ca("some other CA");
        let (server_cert, server_key) = leaf(names, names[0], ExtendedKeyUsagePurpose::ServerAuth, &ca);
        let (client_cert, client_key) = leaf(&[], "relay", ExtendedKeyUsagePurpose::ClientAuth, &ca);
        std::fs::write(dir.path().join("ca.pem"), ca.0.pem()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.0.pem()).unwrap();
        std::fs::write(dir.path().join("client.crt"), &client_cert).unwrap();
        std::fs::write(dir.path().join("client.key"), &client_key).unwrap();
        let server_tls =
            ServerTls { cert_pem: server_cert, key_pem: server_key.clone(), client_ca_pem: Some(ca.0.pem()) };
        Pki { dir, server_tls, keys: vec![server_key, client_key, ca.1.serialize_pem(), other.1.serialize_pem()] }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// A database on a shared server, with its own NATS, slot and stream, and every output captured for the grep.
struct Case<'a> {
    pg: &'a Postgres,
    db: String,
    nats: Nats,
    captured: Vec<String>,
}

impl<'a> Case<'a> {
    /// A database `db` owned by `relay`, with the default outbox table (owned by `relay`, so it can publish it).
    fn new(pg: &'a Postgres, db: &str) -> Case<'a> {
        pg.psql(&format!("CREATE DATABASE {db} OWNER relay")).unwrap();
        pg.psql_db(db, &format!("SET ROLE relay; {OUTBOX_DDL}")).unwrap();
        Case { pg, db: db.to_owned(), nats: Nats::start().unwrap(), captured: Vec::new() }
    }

    fn cmd(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(walrelay_bin().unwrap());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WALRELAY_PG_URL", url)
            .env("WALRELAY_NATS_URL", self.nats.url())
            .env("WALRELAY_NATS_SYNC_INTERVAL", "always")
            .env("WALRELAY_SLOT", &self.db)
            .env("WALRELAY_LOG", "info,walrelay_core=debug")
            .env("WALRELAY_PROGRESS_INTERVAL", "1s");
        cmd
    }

    /// Runs a command to its end (at most `deadline`); returns exit code and all it printed.
    fn run_cmd(&mut self, cmd: Command, deadline: Duration) -> (Option<i32>, String) {
        let (code, out) = run_to_end(cmd, deadline);
        self.captured.push(out.clone());
        (code, out)
    }

    /// 1,000 events in 10 transactions of 100, inserted while the relay runs; returns their ids in commit order.
    fn insert_1000(&self) -> Vec<String> {
        let mut sql = String::new();
        for txn in 0..10 {
            sql.push_str(&format!(
                "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
                 SELECT 'order', 'a{txn}', 'created', jsonb_build_object('txn', {txn}, 'i', g) \
                 FROM generate_series(0, 99) g ORDER BY g;\n"
            ));
        }
        self.pg.psql_db(&self.db, &sql).unwrap();
        let ids = self
            .pg
            .psql_db(
                &self.db,
                "SELECT id FROM outbox WHERE payload ? 'txn' ORDER BY (payload->>'txn')::int, (payload->>'i')::int",
            )
            .unwrap();
        ids.lines().map(str::to_owned).collect()
    }

    /// `run` with `url` relays 1,000 events exactly (ids, order, count), then stops with exit code 0.
    /// `prior`: ids of events committed before, which arrive first.
    async fn relays_exactly(&mut self, url: &str, extra_env: &[(&str, &str)], prior: &[String]) {
        let mut cmd = self.cmd(url, &["run"]);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let relay = Process::spawn(cmd).unwrap();
        if let Err(err) = relay.wait_for_output("relay started", LONG) {
            panic!("{err}\n{}", relay.output());
        }
        let mut expected = prior.to_vec();
        expected.extend(self.insert_1000());
        let js = async_nats::jetstream::new(async_nats::connect(self.nats.url()).await.unwrap());
        wait_stream_count(&js, "OUTBOX", expected.len() as u64, LONG).await;
        let got: Vec<String> = stream_messages(&js, "OUTBOX").await.iter().map(|m| m.id().to_owned()).collect();
        assert_eq!(got, expected, "exact ids, order and count");
        relay.sigterm().unwrap();
        let status = relay.wait_timeout(Duration::from_secs(30)).unwrap().expect("relay stops");
        self.captured.push(relay.output());
        assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
    }
}

/// Runs `cmd` to its end, all of its output read; panics when it runs longer than `deadline` (killing it).
fn run_to_end(mut cmd: Command, deadline: Duration) -> (Option<i32>, String) {
    use std::process::Stdio;
    let started = Instant::now();
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => {
            let out = out.unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(started.elapsed() <= deadline);
            (out.status.code(), text)
        }
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{cmd:?} did not end within {deadline:?}");
        }
    }
}

/// Asserts that no captured output holds any of the secrets.
fn assert_no_secrets(captured: &[String], secrets: &[&str]) {
    for out in captured {
        for secret in secrets {
            let probe = secret.lines().find(|l| l.len() > 20 && !l.starts_with("-----")).unwrap_or(secret);
            assert!(!out.contains(probe), "a secret appears in captured output:\n{out}");
        }
    }
}

fn tls_server(pki: &Pki, hba: &[&str]) -> Postgres {
    let pg = Postgres::builder().tls(pki.server_tls.clone()).hba(hba).start().unwrap();
    pg.psql(&format!("CREATE ROLE relay LOGIN REPLICATION PASSWORD '{PASSWORD}'")).unwrap();
    pg
}

fn url(host: &str, pg: &Postgres, password: Option<&str>, db: &str, params: &str) -> String {
    let userinfo = password.map_or_else(|| "relay".to_owned(), |p| format!("relay:{p}"));
    format!("postgres://{userinfo}@{host}:{}/{db}?{params}", pg.port())
}

/// One server with `ssl = on` and only `hostssl ... scram-sha-256` lines (also for replication), shared by the
/// cases below: each case has its own database, slot, NATS server and stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_only_server_with_scram() {
    let pki = Pki::new();
    let pg = tls_server(
        &pki,
        &["hostssl all relay 127.0.0.1/32 scram-sha-256", "hostssl replication relay 127.0.0.1/32 scram-sha-256"],
    );
    let ca = pki.path("ca.pem");
    let mut captured = Vec::new();

    // verify-full against an IP host (its IP SAN).
    let mut case = Case::new(&pg, "verify_full");
    let u = url("127.0.0.1", &pg, Some(PASSWORD), &case.db, &format!("sslmode=verify-full&sslrootcert={ca}"));
    case.relays_exactly(&u, &[], &[]).await;
    // ... and against a DNS name, for status.
    let u = url("localhost", &pg, Some(PASSWORD), &case.db, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let (code, out) = case.run_cmd(case.cmd(&u, &["status", "--json"]), AUTH_DEADLINE);
    assert_eq!(code, Some(0), "{out}");
    // doctor reports TLS on, verified against the CA file with the host name, and password authentication.
    let (_, out) = case.run_cmd(case.cmd(&u, &["doctor"]), AUTH_DEADLINE);
    let tls_line = out.lines().find(|l| l.contains(" postgres_tls: ")).unwrap_or_default();
    assert!(tls_line.starts_with("ok ") && tls_line.contains("sslmode=verify-full"), "{out}");
    assert!(tls_line.contains(&format!("verified against CA file {ca}, host name checked")), "{out}");
    let auth_line = out.lines().find(|l| l.contains(" postgres_auth: ")).unwrap_or_default();
    assert!(auth_line.contains("user relay: password from --pg-url"), "{out}");
    captured.append(&mut case.captured);

    // verify-ca, with the password from --pg-password-file (the URL holds none).
    let mut case = Case::new(&pg, "verify_ca");
    let pw_file = pki.dir.path().join("pgpass");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).unwrap();
    let u = url("localhost", &pg, None, &case.db, &format!("sslmode=verify-ca&sslrootcert={ca}"));
    case.relays_exactly(&u, &[("WALRELAY_PG_PASSWORD_FILE", &pw_file.display().to_string())], &[]).await;
    captured.append(&mut case.captured);

    // require (no certificate check); the password file wins over a wrong one in the URL.
    let mut case = Case::new(&pg, "require");
    let u = url("127.0.0.1", &pg, Some(WRONG_PASSWORD), &case.db, "sslmode=require");
    case.relays_exactly(&u, &[("WALRELAY_PG_PASSWORD_FILE", &pw_file.display().to_string())], &[]).await;
    let mut cmd = case.cmd(&u, &["doctor"]);
    cmd.env("WALRELAY_PG_PASSWORD_FILE", &pw_file);
    let (_, out) = case.run_cmd(cmd, AUTH_DEADLINE);
    assert!(
        out.lines().any(|l| l.starts_with("ok   postgres_tls: on (") && l.contains("certificate not verified")),
        "{out}"
    );
    assert!(out.contains("user relay: password from --pg-password-file"), "{out}");

    // verify-full against another CA: exit 1, the message names the certificate.
    let other = pki.path("other-ca.pem");
    let u = url("localhost", &pg, Some(PASSWORD), &case.db, &format!("sslmode=verify-full&sslrootcert={other}"));
    let (code, out) = case.run_cmd(case.cmd(&u, &["run"]), AUTH_DEADLINE);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("certificate") && out.contains("TLS"), "{out}");

    // sslmode=disable: the server refuses a connection without TLS; the message says so.
    let u = url("127.0.0.1", &pg, Some(PASSWORD), &case.db, "sslmode=disable");
    let (code, out) = case.run_cmd(case.cmd(&u, &["run"]), AUTH_DEADLINE);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no encryption") || out.contains("hostssl"), "{out}");
    assert!(out.contains("TLS") && out.contains("sslmode"), "{out}");

    // A missing password file: exit 2 naming the option and the path.
    let missing = pki.dir.path().join("no-such-file");
    let mut cmd = case.cmd(&u, &["status"]);
    cmd.env("WALRELAY_PG_PASSWORD_FILE", &missing);
    let (code, out) = case.run_cmd(cmd, AUTH_DEADLINE);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("--pg-password-file") && out.contains(&missing.display().to_string()), "{out}");

    // A wrong password: every command exits 1 within 30 s, says authentication and the user.
    let u = url("localhost", &pg, Some(WRONG_PASSWORD), &case.db, &format!("sslmode=verify-full&sslrootcert={ca}"));
    for args in [
        &["setup"][..],
        &["run"],
        &["status"],
        &["doctor"],
        &["peek"],
        &["replay", "--from", "0/0", "--stdout"],
        &["teardown"],
    ] {
        let (code, out) = case.run_cmd(case.cmd(&u, args), AUTH_DEADLINE);
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(out.contains("authentication") && out.contains("relay"), "{args:?}: {out}");
    }
    captured.append(&mut case.captured);
    let mut secrets: Vec<&str> = vec![PASSWORD, WRONG_PASSWORD];
    secrets.extend(pki.keys.iter().map(String::as_str));
    assert_no_secrets(&captured, &secrets);
}

/// design.md §4a: a server certificate that names another host (a managed database's name, a tunnel to an IP
/// address): `verify-ca` checks the chain only, on the SQL and the replication connections alike, so `run` relays;
/// `verify-full` fails naming the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_ca_accepts_a_certificate_for_another_host() {
    let pki = Pki::for_server(&["db.internal.example"]);
    let pg = tls_server(
        &pki,
        &["hostssl all relay 127.0.0.1/32 scram-sha-256", "hostssl replication relay 127.0.0.1/32 scram-sha-256"],
    );
    let ca = pki.path("ca.pem");
    let mut case = Case::new(&pg, "other_host");
    let u = url("127.0.0.1", &pg, Some(PASSWORD), &case.db, &format!("sslmode=verify-ca&sslrootcert={ca}"));
    case.relays_exactly(&u, &[], &[]).await;
    for host in ["127.0.0.1", "localhost"] {
        let u = url(host, &pg, Some(PASSWORD), &case.db, &format!("sslmode=verify-full&sslrootcert={ca}"));
        let (code, out) = case.run_cmd(case.cmd(&u, &["run"]), AUTH_DEADLINE);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("certificate") && out.contains("TLS"), "{out}");
    }
    // Another CA's certificate still fails under verify-ca.
    let other = pki.path("other-ca.pem");
    let u = url("127.0.0.1", &pg, Some(PASSWORD), &case.db, &format!("sslmode=verify-ca&sslrootcert={other}"));
    let (code, out) = case.run_cmd(case.cmd(&u, &["run"]), AUTH_DEADLINE);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("certificate") && out.contains("TLS"), "{out}");
    let mut secrets: Vec<&str> = vec![PASSWORD];
    secrets.extend(pki.keys.iter().map(String::as_str));
    assert_no_secrets(&case.captured, &secrets);
}

/// `hostssl ... cert`: the client certificate (sslcert/sslkey) authenticates `run`, `status` and `peek`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_authentication() {
    let pki = Pki::new();
    let pg = tls_server(&pki, &["hostssl all relay 127.0.0.1/32 cert", "hostssl replication relay 127.0.0.1/32 cert"]);
    let mut case = Case::new(&pg, "certs");
    let params = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        pki.path("ca.pem"),
        pki.path("client.crt"),
        pki.path("client.key")
    );
    let u = url("localhost", &pg, None, &case.db, &params);
    let (code, out) = case.run_cmd(case.cmd(&u, &["setup"]), LONG);
    assert_eq!(code, Some(0), "{out}");
    pg.psql_db(
        &case.db,
        "INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) \
         SELECT 'order', 'p', 'created', jsonb_build_object('i', g) FROM generate_series(0, 2) g ORDER BY g",
    )
    .unwrap();
    let pending: Vec<String> = pg
        .psql_db(&case.db, "SELECT id FROM outbox ORDER BY (payload->>'i')::int")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (code, out) = case.run_cmd(case.cmd(&u, &["peek", "--json"]), LONG);
    assert_eq!(code, Some(0), "{out}");
    let peeked: Vec<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_owned))
        .collect();
    assert_eq!(peeked, pending, "peek shows the pending events");
    case.relays_exactly(&u, &[], &pending).await;
    let (code, out) = case.run_cmd(case.cmd(&u, &["status", "--json"]), LONG);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("\"lag_bytes\""), "{out}");
    let (_, out) = case.run_cmd(case.cmd(&u, &["doctor"]), LONG);
    assert!(out.contains("postgres_auth: user relay: client certificate (") && out.contains("CN=relay"), "{out}");
    let captured = std::mem::take(&mut case.captured);
    let secrets: Vec<&str> = pki.keys.iter().map(String::as_str).collect();
    assert_no_secrets(&captured, &secrets);
}

/// A multi-host URL whose first host is down: the relay connects to the second, and relays exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_host_url_skips_a_host_that_is_down() {
    let env = Env::start();
    let down = free_port();
    let u = format!(
        "postgres://postgres@127.0.0.1:{down},127.0.0.1:{}/postgres?target_session_attrs=read-write&sslmode=disable",
        env.pg.port()
    );
    let mut cmd = env.walrelay(&["run"]);
    cmd.env("WALRELAY_PG_URL", &u);
    let relay = Process::spawn(cmd).unwrap();
    if let Err(err) = relay.wait_for_output("relay started", LONG) {
        panic!("{err}\n{}", relay.output());
    }
    let client = env.client().await;
    let mut expected = Vec::new();
    for t in 0..5 {
        expected.extend(walrelay_tests::insert_events(&client, &format!("p{t}"), 0, 100).await);
    }
    let js = env.js().await;
    wait_stream_count(&js, &env.stream, 500, LONG).await;
    let got: Vec<String> = stream_messages(&js, &env.stream).await.iter().map(|m| m.id().to_owned()).collect();
    assert_eq!(got, expected);
    relay.sigterm().unwrap();
    let status = relay.wait_timeout(Duration::from_secs(30)).unwrap().expect("relay stops");
    assert_eq!(status.code(), Some(0), "{}", relay.output_tail(30));
    // Only the first host down and only read-only hosts left: run keeps trying (transient), status fails with both.
    let u = format!(
        "postgres://postgres@127.0.0.1:{down},127.0.0.1:{}/postgres?target_session_attrs=read-only",
        env.pg.port()
    );
    let mut cmd = env.walrelay(&["status"]);
    cmd.env("WALRELAY_PG_URL", &u);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{down}")) && text.contains("is not read-only"), "{text}");
}

/// Runs `walrelay <args>` of `env` with `url`, to its end within 30 s; returns exit code and all it printed.
fn run_within_30s(env: &Env, url: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = env.walrelay(args);
    cmd.env("WALRELAY_PG_URL", url);
    run_to_end(cmd, AUTH_DEADLINE)
}

/// Permanent server conditions end every command at once with a remedy, `run` included (issue 13 item 6):
/// an unknown database (3D000), an unknown role (28000), a role without the privileges (42501).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_conditions_end_every_command_with_a_remedy() {
    let env = Env::start();
    env.pg.psql("CREATE ROLE weak LOGIN").unwrap();
    let port = env.pg.port();
    let cases = [
        (format!("postgres://postgres@127.0.0.1:{port}/nodb"), vec!["does not exist", "nodb", "CREATE DATABASE"]),
        (format!("postgres://nobody@127.0.0.1:{port}/postgres"), vec!["authentication", "nobody", "remedy"]),
        (format!("postgres://weak@127.0.0.1:{port}/postgres"), vec!["weak"]),
    ];
    for (url, words) in &cases {
        let commands: &[&[&str]] = if url.contains("weak") {
            // What the role may not do: create the publication (setup) and, once a superuser set up, read the slot
            // (run, peek: REPLICATION).
            &[&["setup"], &["SETUP AS SUPERUSER"], &["run"], &["peek"]]
        } else {
            &[&["setup"], &["run"], &["status"], &["peek"], &["replay", "--from", "0/0", "--stdout"], &["teardown"]]
        };
        for args in commands {
            if args == &["SETUP AS SUPERUSER"] {
                env.setup();
                continue;
            }
            let (code, out) = run_within_30s(&env, url, args);
            assert_eq!(code, Some(1), "{args:?} {url}: {out}");
            for word in words {
                assert!(out.contains(word), "{args:?} {url}: no `{word}` in:\n{out}");
            }
            assert!(!out.contains("retrying"), "{args:?} {url}: a permanent condition is not retried:\n{out}");
            if url.contains("weak") {
                let remedies = ["GRANT ", "ALTER ROLE \"weak\" WITH REPLICATION", "CREATE PUBLICATION"];
                assert!(remedies.iter().any(|r| out.contains(r)), "{args:?}: no remedy statement in:\n{out}");
            }
        }
    }
}

/// A PostgreSQL 15 standby cannot decode: `run` exits 1 at once naming PostgreSQL 16 and the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_decoding_on_a_pg15_standby_is_permanent() {
    let primary = Postgres::builder().setting("hot_standby_feedback", "on").start().unwrap();
    primary.psql(OUTBOX_DDL).unwrap();
    primary.psql("CREATE PUBLICATION walrelay FOR TABLE public.outbox WITH (publish = 'insert')").unwrap();
    let standby = primary.start_standby("standby1", &[]).unwrap();
    standby.wait_replayed(&primary, LONG).unwrap();
    let env = Env { pg: standby, nats: Nats::start().unwrap(), stream: "OUTBOX".into(), slot: "walrelay".into() };
    let (code, out) = run_within_30s(&env, &env.pg_url(), &["run"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("logical decoding") && out.contains("PostgreSQL 16") && out.contains("primary"), "{out}");
    assert!(!out.contains("retrying"), "{out}");
    drop(primary);
}

/// MD5 password authentication (older servers) works for the SQL and the replication connection alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_password_authentication() {
    let pg = Postgres::builder()
        .setting("password_encryption", "md5")
        .hba(&["host all relay 127.0.0.1/32 md5"])
        .start()
        .unwrap();
    pg.psql(&format!("CREATE ROLE relay LOGIN REPLICATION PASSWORD '{PASSWORD}'")).unwrap();
    let mut case = Case::new(&pg, "md5");
    let u = url("127.0.0.1", &pg, Some(PASSWORD), &case.db, "sslmode=disable");
    case.relays_exactly(&u, &[], &[]).await;
    assert_no_secrets(&case.captured, &[PASSWORD]);
}
