//! walrelay against NATS servers that require TLS and authentication (design.md §4a, issue 8).
//!
//! Each scenario starts its own PostgreSQL and a nats-server with TLS (a CA and certificates generated here with
//! rcgen) and one authentication method: user/password in the URL (with a client certificate), a token file, an
//! nkey seed file, and JWT credentials in operator mode with a memory resolver (operator, account and user JWTs
//! signed here with nkeys). In each, `run` relays exactly what was committed, wrong credentials end every command
//! with exit 1 within 30 s saying `authentication` and the method, and nothing the test captured holds a secret.
//! TLS mismatches (TLS to a plaintext server, plaintext to a TLS server, an unrelated CA, a missing client
//! certificate) fail clearly; `--nats-tls-first` works against `handshake_first` (a current nats-server).

use walrelay_tests::ops as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use nkeys::KeyPair;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use support::{run, stop_relay, Env, Error, Output, TestResult};
use walrelay_testkit::{locate, wait_until, walrelay_bin, Nats, Postgres};

/// Events per scenario: three transactions of 100.
const TXNS: usize = 3;
const PER_TXN: usize = 100;
/// Permanent failures must end a command within this.
const FAIL_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------------------------
// Test PKI and NATS credentials, generated per test.

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate signed by it, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    client_cert_der: CertificateDer<'static>,
    client_key_der: Vec<u8>,
}

impl Pki {
    fn generate() -> Result<Pki, Error> {
        let dir = tempfile::Builder::new().prefix("walrelay-pki-").tempdir()?;
        let ca = |name: &str| -> Result<(rcgen::Certificate, rcgen::KeyPair), Error> {
            let key = rcgen::KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            Ok((params.self_signed(&key)?, key))
        };
        let (ca_cert, ca_key) = ca("walrelay test CA")?;
        let (other_ca, _) = ca("unrelated test CA")?;
        let leaf = |sans: Vec<String>, name: &str| -> Result<(rcgen::Certificate, rcgen::KeyPair), Error> {
            let key = rcgen::KeyPair::generate()?;
            let mut params = CertificateParams::new(sans)?;
            params.distinguished_name.push(DnType::CommonName, name);
            Ok((params.signed_by(&key, &ca_cert, &ca_key)?, key))
        };
        let (server, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()], "nats test server")?;
        let (client, client_key) = leaf(vec!["walrelay".into()], "walrelay")?;
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
        write("ca.pem", ca_cert.pem())?;
        write("other-ca.pem", other_ca.pem())?;
        write("server.pem", server.pem())?;
        write("server-key.pem", server_key.serialize_pem())?;
        write("client.pem", client.pem())?;
        write("client-key.pem", client_key.serialize_pem())?;
        Ok(Pki {
            ca_der: ca_cert.der().clone(),
            client_cert_der: client.der().clone(),
            client_key_der: client_key.serialize_der(),
            dir,
        })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The server's `tls` block; `verify` requires a client certificate.
    fn server_tls(&self, verify: bool, extra: &str) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 3\n  {extra}\n}}",
            self.path("server.pem"),
            self.path("server-key.pem"),
            self.path("ca.pem")
        )
    }

    /// A rustls configuration for the test's own client (independent of walrelay's).
    fn client_config(&self, with_cert: bool) -> Result<rustls::ClientConfig, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        Ok(if with_cert {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.client_key_der.clone()));
            builder.with_client_auth_cert(vec![self.client_cert_der.clone()], key)?
        } else {
            builder.with_no_client_auth()
        })
    }
}

/// A random-looking secret (nkeys' randomness; only letters and digits, so it fits a URL unescaped).
fn secret(prefix: &str) -> String {
    format!("{prefix}{}", &KeyPair::new_user().public_key()[1..25])
}

/// A JWT as nats-server expects it: `ed25519-nkey`, signed by the issuer's nkey.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> Result<String, Error> {
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims =
        json!({"jti": secret("J"), "iat": iat, "iss": issuer.public_key(), "sub": subject, "name": name, "nats": nats});
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = issuer.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

/// Operator mode: an operator, a system account, an account with JetStream, and the server config that trusts them
/// through a memory resolver.
struct Operator {
    config: String,
    account: KeyPair,
}

impl Operator {
    fn new(dir: &Path) -> Result<Operator, Error> {
        let operator = KeyPair::new_operator();
        let system = KeyPair::new_account();
        let account = KeyPair::new_account();
        let op_jwt =
            jwt(&operator, &operator.public_key(), "test-operator", json!({"type": "operator", "version": 2}))?;
        let basic = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
                           "conn": -1, "leaf": -1});
        let mut js_limits = basic.clone();
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            js_limits[key] = json!(-1);
        }
        let sys_jwt =
            jwt(&operator, &system.public_key(), "SYS", json!({"type": "account", "version": 2, "limits": basic}))?;
        let acc_jwt = jwt(
            &operator,
            &account.public_key(),
            "APP",
            json!({"type": "account", "version": 2, "limits": js_limits}),
        )?;
        let op_path = dir.join("operator.jwt");
        std::fs::write(&op_path, &op_jwt)?;
        let config = format!(
            "operator: \"{op}\"\nsystem_account: \"{sys}\"\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: \"{sys_jwt}\"\n  {acc}: \"{acc_jwt}\"\n}}",
            op = op_path.display(),
            sys = system.public_key(),
            acc = account.public_key(),
        );
        Ok(Operator { config, account })
    }
}

/// A `.creds` file's text for a user issued by `account`; also returns the JWT and the seed (the secrets).
fn user_creds(account: &KeyPair) -> Result<(String, String, String), Error> {
    let user = KeyPair::new_user();
    let nats = json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1});
    let user_jwt = jwt(account, &user.public_key(), "relay", nats)?;
    let seed = user.seed()?;
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    Ok((text, user_jwt, seed))
}

// ---------------------------------------------------------------------------------------------------------------
// Running walrelay and checking what arrived.

/// Everything a scenario captured, to search for secrets at the end.
#[derive(Default)]
struct Captured(Vec<String>);

impl Captured {
    fn output(&mut self, out: &Output) {
        self.0.push(out.stdout.clone());
        self.0.push(out.stderr.clone());
    }

    fn assert_free_of(&self, secrets: &[&str]) {
        for secret in secrets {
            assert!(secret.len() >= 8, "secret too short to search for: {secret}");
            for text in &self.0 {
                assert!(!text.contains(secret), "a secret appears in captured output:\n{text}");
            }
        }
    }
}

/// How walrelay and the test's own client authenticate in one scenario.
struct Scenario {
    env: Env,
    /// Extra walrelay arguments (the auth and TLS options).
    args: Vec<String>,
    /// Extra walrelay environment variables.
    vars: Vec<(String, String)>,
    /// The test client's connect options.
    client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>>,
    /// URL for the test client (without credentials).
    client_url: String,
    captured: Captured,
}

impl Scenario {
    fn command(&self, args: &[&str]) -> Result<std::process::Command, Error> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(self.args.iter().map(String::as_str));
        let mut cmd = self.env.command(&all)?;
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    fn walrelay(&mut self, args: &[&str]) -> Result<Output, Error> {
        let out = run(self.command(args)?)?;
        self.captured.output(&out);
        Ok(out)
    }

    /// The message ids in the stream, in sequence order.
    fn stream_ids(&self, stream: &str) -> Result<Vec<String>, Error> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let client = (self.client)()?.connect(self.client_url.as_str()).await?;
            let js = async_nats::jetstream::new(client);
            let mut s = match js.get_stream(stream).await {
                Ok(s) => s,
                Err(_) => return Ok(Vec::new()),
            };
            let state = s.info().await?.state.clone();
            let mut ids = Vec::new();
            if state.messages == 0 {
                return Ok(ids);
            }
            for seq in state.first_sequence..=state.last_sequence {
                let msg = s.get_raw_message(seq).await?;
                ids.push(msg.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_default());
            }
            Ok(ids)
        })
    }

    /// `setup`, then `run` relays TXNS × PER_TXN events exactly: every id once, in commit and insert order.
    fn relays_exactly(&mut self) -> TestResult {
        let out = self.walrelay(&["setup"])?;
        assert_eq!(out.code, 0, "setup failed: {}{}", out.stdout, out.stderr);
        let mut cmd = self.command(&["run"])?;
        cmd.env("WALRELAY_LOG", "info");
        let relay = walrelay_testkit::Process::spawn(cmd)?;
        let mut expected = Vec::new();
        for t in 0..TXNS {
            let events: Vec<(String, String)> =
                (0..PER_TXN).map(|i| ("created".to_owned(), format!("{{\"t\": {t}, \"i\": {i}}}"))).collect();
            let refs: Vec<(&str, &str)> = events.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            expected.extend(self.env.insert_txn(&refs)?);
        }
        let n = expected.len();
        let arrived = wait_until(&format!("{n} messages in OUTBOX"), support::DELIVERY_TIMEOUT, || {
            self.stream_ids("OUTBOX").ok().filter(|ids| ids.len() >= n)
        });
        let output = relay.output();
        self.captured.0.push(output.clone());
        arrived.map_err(|e| format!("{e}; relay output:\n{output}"))?;
        stop_relay(relay)?;
        let ids = self.stream_ids("OUTBOX")?;
        assert_eq!(ids.len(), n, "exactly {n} messages");
        assert_eq!(ids, expected, "every event once, in commit and insert order");
        Ok(())
    }
}

/// A command with wrong credentials exits 1 within 30 s, saying authentication and the method.
fn assert_auth_failure(out: &Output, took: Duration, method: &str, command: &str) {
    let text = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{command} with wrong credentials: exit {}:\n{text}", out.code);
    assert!(took < FAIL_WITHIN, "{command} took {took:?}");
    assert!(text.contains("authentication"), "{command}: no `authentication` in:\n{text}");
    assert!(text.contains(&format!("auth method: {method}")), "{command}: method {method} not named in:\n{text}");
    assert!(!text.contains("start nats-server"), "{command}: the unreachable remedy for an auth failure:\n{text}");
}

fn timed(s: &mut Scenario, args: &[&str]) -> Result<(Output, Duration), Error> {
    let t0 = Instant::now();
    let out = s.walrelay(args)?;
    Ok((out, t0.elapsed()))
}

fn tls_nats(pki: &Pki, verify: bool, auth: &str) -> Result<Nats, Error> {
    Ok(Nats::builder().extra_config(pki.server_tls(verify, "")).extra_config(auth).start()?)
}

fn scenario(
    nats: Nats,
    args: Vec<String>,
    url: String,
    client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>>,
) -> Result<Scenario, Error> {
    let client_url = format!("tls://127.0.0.1:{}", nats.port());
    let mut env = Env::with(Postgres::start()?, nats)?;
    env.nats_url = url;
    Ok(Scenario { env, args, vars: Vec::new(), client, client_url, captured: Captured::default() })
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios.

/// User and password in a `tls://` URL, with a client certificate (the server verifies it) and only the permissions
/// docs/security.md lists: `run` relays exactly;
/// a wrong password ends setup, run, status, doctor, peek, replay and teardown with exit 1 and the remedy.
#[test]
fn user_password_in_url_with_client_certificate() -> TestResult {
    let pki = Pki::generate()?;
    let password = secret("pw");
    // Exactly the permissions docs/security.md lists for the relay (no `teardown --drop-stream` here).
    let permissions = r#"permissions: {
        publish: { allow: ["outbox.>", "$JS.API.STREAM.INFO.OUTBOX", "$JS.API.STREAM.CREATE.OUTBOX",
                           "$JS.API.STREAM.MSG.GET.OUTBOX"] }
        subscribe: { allow: ["_INBOX.>"] }
    }"#;
    let users = format!("authorization {{ users = [ {{ user: relay, password: \"{password}\", {permissions} }} ] }}");
    let nats = tls_nats(&pki, true, &users)?;
    let port = nats.port();
    let args = vec![
        format!("--nats-tls-ca={}", pki.path("ca.pem")),
        format!("--nats-tls-cert={}", pki.path("client.pem")),
        format!("--nats-tls-key={}", pki.path("client-key.pem")),
    ];
    let config = Arc::new(pki.client_config(true)?);
    let pw = password.clone();
    let client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>> = Box::new(move || {
        Ok(async_nats::ConnectOptions::with_user_and_password("relay".into(), pw.clone())
            .tls_client_config((*config).clone()))
    });
    let mut s = scenario(nats, args, format!("tls://relay:{password}@127.0.0.1:{port}"), client)?;
    s.relays_exactly()?;

    let doctor = s.walrelay(&["doctor"])?;
    let text = &doctor.stdout;
    assert!(text.contains("ok   nats_tls: on, verified against CA file"), "doctor:\n{text}");
    assert!(text.contains("client certificate"), "doctor:\n{text}");
    assert!(text.contains("ok   nats_auth: user/password (user relay)"), "doctor:\n{text}");

    // Wrong password: every command, with the slot in place so each gets as far as NATS.
    let wrong = secret("wrong");
    s.env.nats_url = format!("tls://relay:{wrong}@127.0.0.1:{port}");
    s.env.insert_txn(&[("created", "{\"pending\": true}")])?;
    let from = s.env.confirmed_flush("walrelay")?;
    for command in [
        &["setup"][..],
        &["run"],
        &["status"],
        &["doctor"],
        &["peek"],
        &["replay", "--from", from.trim()],
        &["teardown", "--drop-stream"],
    ] {
        let (out, took) = timed(&mut s, command)?;
        assert_auth_failure(&out, took, "user/password", &command.join(" "));
    }
    assert!(s.env.slots()?.contains(&"walrelay".to_owned()), "teardown with a rejected credential dropped the slot");
    s.captured.assert_free_of(&[&password, &wrong]);
    Ok(())
}

/// A token read from `--nats-token-file` over TLS verified against the test CA.
#[test]
fn token_file() -> TestResult {
    let pki = Pki::generate()?;
    let token = secret("tok");
    let nats = tls_nats(&pki, false, &format!("authorization {{ token: \"{token}\" }}"))?;
    let port = nats.port();
    let token_path = pki.dir.path().join("token");
    std::fs::write(&token_path, format!("{token}\n"))?;
    let args =
        vec![format!("--nats-tls-ca={}", pki.path("ca.pem")), format!("--nats-token-file={}", token_path.display())];
    let config = Arc::new(pki.client_config(false)?);
    let tok = token.clone();
    let client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>> =
        Box::new(move || Ok(async_nats::ConnectOptions::with_token(tok.clone()).tls_client_config((*config).clone())));
    let mut s = scenario(nats, args, format!("nats://127.0.0.1:{port}"), client)?;
    s.relays_exactly()?;

    let wrong = secret("badtok");
    std::fs::write(&token_path, format!("{wrong}\n"))?;
    for command in [&["setup"][..], &["run"]] {
        let (out, took) = timed(&mut s, command)?;
        assert_auth_failure(&out, took, "token", &command.join(" "));
    }
    // No credentials at all against a server that requires them: the remedy says which options exist.
    s.args.retain(|a| !a.starts_with("--nats-token-file"));
    let (out, took) = timed(&mut s, &["setup"])?;
    assert_auth_failure(&out, took, "none", "setup without credentials");
    assert!(out.stderr.contains("--nats-creds"), "{}", out.stderr);
    s.captured.assert_free_of(&[&token, &wrong]);
    Ok(())
}

/// An nkey seed file, given in the config file (`nats_nkey`), over `tls://localhost` (host name verification).
#[test]
fn nkey_seed_file_from_config() -> TestResult {
    let pki = Pki::generate()?;
    let user = KeyPair::new_user();
    let seed = user.seed()?;
    let nats =
        tls_nats(&pki, false, &format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}", user.public_key()))?;
    let port = nats.port();
    let seed_path = pki.dir.path().join("relay.nk");
    std::fs::write(&seed_path, format!("{seed}\n"))?;
    let config_path = pki.dir.path().join("walrelay.toml");
    std::fs::write(
        &config_path,
        format!("nats_nkey = \"{}\"\nnats_tls_ca = \"{}\"\n", seed_path.display(), pki.path("ca.pem")),
    )?;
    let config = Arc::new(pki.client_config(false)?);
    let client_seed = seed.clone();
    let client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>> = Box::new(move || {
        Ok(async_nats::ConnectOptions::with_nkey(client_seed.clone()).tls_client_config((*config).clone()))
    });
    let mut s =
        scenario(nats, vec![format!("--config={}", config_path.display())], format!("tls://localhost:{port}"), client)?;
    s.relays_exactly()?;

    let doctor = s.walrelay(&["doctor"])?;
    assert!(doctor.stdout.contains(&format!("ok   nats_auth: nkey ({})", user.public_key())), "{}", doctor.stdout);

    let other = KeyPair::new_user();
    let other_seed = other.seed()?;
    std::fs::write(&seed_path, format!("{other_seed}\n"))?;
    for command in [&["setup"][..], &["run"]] {
        let (out, took) = timed(&mut s, command)?;
        assert_auth_failure(&out, took, "nkey", &command.join(" "));
    }
    s.captured.assert_free_of(&[&seed, &other_seed]);
    Ok(())
}

/// JWT credentials (`--nats-creds` through WALRELAY_NATS_CREDS) in operator mode with a memory resolver.
#[test]
fn creds_in_operator_mode() -> TestResult {
    let pki = Pki::generate()?;
    let operator = Operator::new(pki.dir.path())?;
    let nats = tls_nats(&pki, false, &operator.config)?;
    let port = nats.port();
    let (creds, user_jwt, user_seed) = user_creds(&operator.account)?;
    let creds_path = pki.dir.path().join("relay.creds");
    std::fs::write(&creds_path, &creds)?;
    let config = Arc::new(pki.client_config(false)?);
    let client_creds = creds.clone();
    let client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>> = Box::new(move || {
        Ok(async_nats::ConnectOptions::with_credentials(&client_creds)?.tls_client_config((*config).clone()))
    });
    let mut s = scenario(nats, Vec::new(), format!("nats://127.0.0.1:{port}"), client)?;
    s.vars.push(("WALRELAY_NATS_CREDS".into(), creds_path.display().to_string()));
    s.vars.push(("WALRELAY_NATS_TLS_CA".into(), pki.path("ca.pem")));
    s.relays_exactly()?;

    // A user of an account the server does not know.
    let (wrong, wrong_jwt, wrong_seed) = user_creds(&KeyPair::new_account())?;
    std::fs::write(&creds_path, wrong)?;
    for command in [&["setup"][..], &["run"]] {
        let (out, took) = timed(&mut s, command)?;
        assert_auth_failure(&out, took, "creds", &command.join(" "));
    }
    s.captured.assert_free_of(&[&user_jwt, &user_seed, &wrong_jwt, &wrong_seed]);
    Ok(())
}

/// `--nats-tls-first` against a server with `handshake_first` (nats-server 2.10.4+).
#[test]
fn tls_first_handshake() -> TestResult {
    let pki = Pki::generate()?;
    let nats = Nats::builder()
        .bin(locate::nats_server_new()?)
        .extra_config(pki.server_tls(false, "handshake_first: true"))
        .start()?;
    let port = nats.port();
    let config = Arc::new(pki.client_config(false)?);
    let client: Box<dyn Fn() -> Result<async_nats::ConnectOptions, Error>> =
        Box::new(move || Ok(async_nats::ConnectOptions::new().tls_first().tls_client_config((*config).clone())));
    let args = vec![format!("--nats-tls-ca={}", pki.path("ca.pem"))];
    let mut s = scenario(nats, args, format!("nats://127.0.0.1:{port}"), client)?;
    s.vars.push(("WALRELAY_NATS_TLS_FIRST".into(), "true".into()));
    s.relays_exactly()?;
    let doctor = s.walrelay(&["doctor"])?;
    assert!(doctor.stdout.contains("ok   nats_tls: on, verified against CA file"), "{}", doctor.stdout);
    assert!(doctor.stdout.contains("handshake first"), "{}", doctor.stdout);
    Ok(())
}

/// TLS to a plaintext server, plaintext to a TLS server, an unrelated CA and a missing client certificate each end
/// `setup` (and `run`, without retrying) with exit 1 and TLS or certificate in the message.
#[test]
fn tls_mismatches_fail_clearly() -> TestResult {
    let pki = Pki::generate()?;
    let plain = Nats::start()?;
    let tls = tls_nats(&pki, false, "")?;
    let mtls = tls_nats(&pki, true, "")?;
    let env = Env::with(Postgres::start()?, Nats::start()?)?;
    let ca = format!("--nats-tls-ca={}", pki.path("ca.pem"));
    let other_ca = format!("--nats-tls-ca={}", pki.path("other-ca.pem"));
    let cases: Vec<(&str, String, Vec<String>, &[&str])> = vec![
        ("tls:// to a plaintext server", format!("tls://127.0.0.1:{}", plain.port()), vec![], &["TLS"]),
        ("--nats-tls-ca to a plaintext server", plain.url(), vec![ca.clone()], &["TLS"]),
        ("no CA for a TLS server", tls.url(), vec![], &["certificate"]),
        ("an unrelated CA", tls.url(), vec![other_ca], &["certificate"]),
        ("no client certificate for a verifying server", mtls.url(), vec![ca], &["TLS"]),
    ];
    for (case, url, args, words) in cases {
        for command in ["setup", "run"] {
            let mut all = vec![command];
            all.extend(args.iter().map(String::as_str));
            let mut cmd = env.command(&all)?;
            cmd.env("WALRELAY_NATS_URL", &url);
            let t0 = Instant::now();
            let out = run(cmd)?;
            let took = t0.elapsed();
            let text = format!("{}{}", out.stdout, out.stderr);
            assert_eq!(out.code, 1, "{case}, {command}: exit {}:\n{text}", out.code);
            assert!(took < FAIL_WITHIN, "{case}, {command}: took {took:?}");
            assert!(words.iter().any(|w| text.contains(w)), "{case}, {command}: none of {words:?} in:\n{text}");
            assert!(!text.contains("start nats-server"), "{case}, {command}: the unreachable remedy:\n{text}");
        }
    }
    Ok(())
}

/// A missing or unreadable file option exits 2 before connecting, naming the option and the path.
#[test]
fn missing_files_exit_2_naming_option_and_path() -> TestResult {
    let pki = Pki::generate()?;
    let missing: PathBuf = pki.dir.path().join("absent.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client-key.pem"));
    let m = missing.display().to_string();
    for (option, extra) in [
        ("--nats-creds", vec![]),
        ("--nats-nkey", vec![]),
        ("--nats-token-file", vec![]),
        ("--nats-tls-ca", vec![]),
        ("--nats-tls-cert", vec![format!("--nats-tls-key={key}")]),
        ("--nats-tls-key", vec![format!("--nats-tls-cert={cert}")]),
    ] {
        let mut cmd = std::process::Command::new(walrelay_bin()?);
        cmd.env_remove("WALRELAY_CONFIG").arg("setup").arg(format!("{option}={m}")).args(&extra);
        let out = run(cmd)?;
        assert_eq!(out.code, 2, "{option}: exit {}: {}", out.code, out.stderr);
        assert!(out.stderr.contains(option) && out.stderr.contains(&m), "{option}: {}", out.stderr);
    }
    // A certificate without its key.
    let mut cmd = std::process::Command::new(walrelay_bin()?);
    cmd.env_remove("WALRELAY_CONFIG").args(["setup", &format!("--nats-tls-cert={cert}")]);
    let out = run(cmd)?;
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--nats-tls-key"), "{}", out.stderr);
    Ok(())
}

/// Credentials the server stops accepting while `run` is connected (changed on the server and reloaded): async-nats
/// would reconnect and fail forever; the relay exits 1 within 30 s saying authentication, also while idle.
#[test]
fn credentials_rejected_while_running_stop_the_relay() -> TestResult {
    let password = secret("pw");
    let nats = Nats::builder()
        .extra_config(format!("authorization {{ users = [ {{ user: relay, password: \"{password}\" }} ] }}"))
        .start()?;
    let (port, config_path, pid) = (nats.port(), nats.config_path().to_path_buf(), nats.pid().ok_or("no pid")?);
    let mut env = Env::with(Postgres::start()?, nats)?;
    env.nats_url = format!("nats://relay:{password}@127.0.0.1:{port}");
    let mut captured = Captured::default();
    let setup = env.walrelay(&["setup"])?;
    captured.output(&setup);
    assert_eq!(setup.code, 0, "{}", setup.stderr);
    let relay = env.start_relay(&[])?;
    relay.wait_for_output("relay started", support::DELIVERY_TIMEOUT)?;
    let changed = secret("pw");
    let text = std::fs::read_to_string(&config_path)?.replace(&password, &changed);
    std::fs::write(&config_path, text)?;
    let t0 = Instant::now();
    let reload = std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status()?;
    assert!(reload.success(), "cannot signal nats-server");
    let status = relay.wait_timeout(FAIL_WITHIN)?;
    let output = relay.output();
    captured.0.push(output.clone());
    let status = status.ok_or_else(|| format!("relay still running 30 s after the reload:\n{output}"))?;
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(t0.elapsed() < FAIL_WITHIN);
    assert!(output.contains("authentication failed (auth method: user/password)"), "{output}");
    captured.assert_free_of(&[&password, &changed]);
    Ok(())
}
