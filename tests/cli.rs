//! The command line as users meet it: exit code 2 for usage and configuration errors found before connecting,
//! flag > env > file > default layering, and no secrets in errors.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

use walrelay_tests::walrelay_testkit::{free_port, walrelay_bin, Postgres};

fn walrelay(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(walrelay_bin().unwrap());
    cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn usage_and_configuration_errors_exit_2_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let unknown_key = dir.path().join("unknown.toml");
    std::fs::write(&unknown_key, "slot = \"a\"\nno_such_option = 1\n").unwrap();
    let missing = dir.path().join("missing.toml");
    // Every server URL points at a closed port: a 2 must come from validation, not from a connection.
    let closed = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["frobnicate"], vec![], "frobnicate"),
        (vec!["run", "--bogus"], vec![], "--bogus"),
        (vec!["replay", "--from", "not-an-lsn"], vec![], "--from"),
        (vec!["replay", "--from", "0/1", "--to", "1/2/3"], vec![], "--to"),
        (vec!["status", "--max-lag", "12 parsecs"], vec![], "--max-lag"),
        (vec!["status", "--pg-url", "postgres://u@127.0.0.1:notaport/db"], vec![], "--pg-url"),
        (vec!["status", "--nats-url", "nats://127.0.0.1:99999999"], vec![], "--nats-url"),
        (vec!["run"], vec![("WALRELAY_SLOT", "Bad Slot")], "--slot"),
        (vec!["run", "--subject", "outbox.{a"], vec![], "--subject"),
        (vec!["run", "--on-invalid", "ignore"], vec![], "--on-invalid"),
        (vec!["run", "--publish-timeout", "soon"], vec![], "--publish-timeout"),
        // Out of range: refused, never clamped (issue 9).
        (vec!["run", "--stream-replicas", "9"], vec![], "--stream-replicas"),
        (vec!["setup", "--stream-replicas", "0"], vec![], "--stream-replicas"),
        (vec!["run", "--max-in-flight", "0"], vec![], "--max-in-flight"),
        (vec!["run"], vec![("WALRELAY_MAX_IN_FLIGHT", "18446744073709551615")], "--max-in-flight"),
        (vec!["run", "--log", "info,walrelay_core=loud"], vec![], "--log"),
        (vec!["run"], vec![("WALRELAY_LOG", "[")], "--log"),
        (vec!["run", "--publish-timeout", "0s"], vec![], "--publish-timeout"),
        (vec!["run", "--progress-interval", "0s"], vec![], "--progress-interval"),
        (vec!["run", "--replay-retention", "0s"], vec![], "--replay-retention"),
        (vec!["run", "--nats-sync-interval", "sometimes"], vec![], "--nats-sync-interval"),
        (vec!["run"], vec![("WALRELAY_NATS_SYNC_INTERVAL", "-1s")], "--nats-sync-interval"),
        (vec!["verify", "--from", "yesterday"], vec![], "--from"),
        (vec!["verify", "--from", "0/10", "--to", "0/5"], vec![], "--to"),
        (vec!["run", "--nats-batch", "on"], vec![], "--nats-batch"),
        (vec!["run"], vec![("WALRELAY_NATS_BATCH", "always")], "--nats-batch"),
        (vec!["run", "--config", unknown_key.to_str().unwrap()], vec![], "no_such_option"),
        (vec!["run"], vec![("WALRELAY_CONFIG", missing.to_str().unwrap())], "does not exist"),
    ];
    for (args, env, needle) in cases {
        let mut env = env;
        env.push(("WALRELAY_PG_URL", &closed));
        let out = walrelay(&args, &env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: error should name {needle}: {}", stderr(&out));
    }
}

#[test]
fn help_documents_every_option_with_its_environment_variable() {
    let out = walrelay(&["run", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--pg-url", "WALRELAY_PG_URL"),
        ("--slot", "WALRELAY_SLOT"),
        ("--publication", "WALRELAY_PUBLICATION"),
        ("--table", "WALRELAY_TABLE"),
        ("--nats-url", "WALRELAY_NATS_URL"),
        ("--stream", "WALRELAY_STREAM"),
        ("--subject", "WALRELAY_SUBJECT"),
        ("--config", "WALRELAY_CONFIG"),
        ("--on-invalid", "WALRELAY_ON_INVALID"),
        ("--max-in-flight", "WALRELAY_MAX_IN_FLIGHT"),
        ("--replay-retention", "WALRELAY_REPLAY_RETENTION"),
        ("--no-create", "WALRELAY_NO_CREATE"),
        ("--nats-creds", "WALRELAY_NATS_CREDS"),
        ("--nats-nkey", "WALRELAY_NATS_NKEY"),
        ("--nats-token-file", "WALRELAY_NATS_TOKEN_FILE"),
        ("--nats-tls-ca", "WALRELAY_NATS_TLS_CA"),
        ("--nats-tls-cert", "WALRELAY_NATS_TLS_CERT"),
        ("--nats-tls-key", "WALRELAY_NATS_TLS_KEY"),
        ("--nats-tls-first", "WALRELAY_NATS_TLS_FIRST"),
        ("--nats-sync-interval", "WALRELAY_NATS_SYNC_INTERVAL"),
        ("--nats-batch", "WALRELAY_NATS_BATCH"),
    ] {
        assert!(help.contains(flag) && help.contains(env), "{flag} / {env} missing from --help:\n{help}");
    }
}

#[test]
fn passwords_never_appear_in_errors() {
    let url = format!("postgres://alice:s3cret-pw@127.0.0.1:{}/app", free_port());
    let out = walrelay(&["status"], &[("WALRELAY_PG_URL", &url)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("unreachable"), "{err}");
    assert!(!err.contains("s3cret-pw"), "password leaked: {err}");
    let out = walrelay(&["status", "--pg-url", &url.replace(":s3cret-pw@", ":s3cret-pw@:x")], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("s3cret-pw"), "password leaked: {}", stderr(&out));
    // NATS userinfo (a token, a password) is masked in usage errors too.
    for url in ["nats://t0ken-s3cret@127.0.0.1:99999999", "nats://relay:s3cret-pw@127.0.0.1:99999999"] {
        let out = walrelay(&["status", "--nats-url", url], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(!stderr(&out).contains("s3cret"), "secret leaked: {}", stderr(&out));
    }
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let pg = Postgres::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walrelay.toml");
    std::fs::write(&file, format!("pg_url = \"{}\"\nslot = \"from_file\"\n", pg.url("postgres"))).unwrap();
    let cfg = file.to_str().unwrap();
    let missing_slot = |o: &Output| {
        assert_eq!(o.status.code(), Some(1), "{}", stderr(o));
        let err = stderr(o);
        ["from_file", "from_env", "from_flag", "walrelay "]
            .into_iter()
            .find(|s| err.contains(&format!("slot {s}")))
            .map(str::to_owned)
    };
    // status of a slot that does not exist names the slot that won.
    let o = walrelay(&["status", "--config", cfg], &[]);
    assert_eq!(missing_slot(&o).as_deref(), Some("from_file"), "{}", stderr(&o));
    let o = walrelay(&["status", "--config", cfg], &[("WALRELAY_SLOT", "from_env")]);
    assert_eq!(missing_slot(&o).as_deref(), Some("from_env"), "{}", stderr(&o));
    let o = walrelay(&["status", "--config", cfg, "--slot", "from_flag"], &[("WALRELAY_SLOT", "from_env")]);
    assert_eq!(missing_slot(&o).as_deref(), Some("from_flag"), "{}", stderr(&o));
    let o = walrelay(&["status", "--pg-url", &pg.url("postgres")], &[]);
    assert_eq!(missing_slot(&o).as_deref(), Some("walrelay "), "{}", stderr(&o));
}

#[test]
fn config_file_errors_name_the_key_and_what_it_takes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("walrelay.toml");
    let config = file.to_str().unwrap();
    std::fs::write(&file, "slot = \"a\"\nbogus_key = 1\n").unwrap();
    let out = walrelay(&["run", "--config", config], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("config file {config}: unknown key \"bogus_key\"")), "{err}");
    assert!(err.contains("docs/configuration.md"), "{err}");
    for internal in ["expected", "default.", "`pg_url`", "one of"] {
        assert!(!err.contains(internal), "{internal:?} leaks from the parser: {err}");
    }
    std::fs::write(&file, "max_in_flight = \"many\"\n").unwrap();
    let out = walrelay(&["run", "--config", config], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("key \"max_in_flight\" takes a whole number"), "{}", stderr(&out));
    std::fs::write(&file, "no_create = \"yes\"\n").unwrap();
    let out = walrelay(&["run", "--config", config], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("key \"no_create\" takes true or false"), "{}", stderr(&out));
}

#[test]
fn each_command_lists_the_options_it_uses_and_accepts_all() {
    let help = |args: &[&str], env: &[(&str, &str)]| {
        let out = walrelay(args, env);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // No stray `=` after an unset variable, no value of a set one.
    let run = help(&["run", "--help"], &[("WALRELAY_SLOT", "from_env")]);
    assert!(run.contains("[env: WALRELAY_SLOT]") && !run.contains("WALRELAY_SLOT="), "{run}");
    assert!(!run.contains("from_env"), "{run}");
    assert!(run.contains("--prune-after <DURATION>") && run.contains("--max-in-flight"), "run uses them:\n{run}");
    // Durations and sizes are explained under every command.
    for command in ["run", "status", "teardown", "replay"] {
        let text = help(&[command, "--help"], &[]);
        assert!(text.contains("Durations:") && text.contains("KiB/MiB/GiB"), "{command}:\n{text}");
    }
    // status lists what it uses, not the relay's tuning or the mapping.
    let status = help(&["status", "--help"], &[]);
    assert!(status.contains("--slot") && status.contains("--nats-url") && status.contains("--max-lag <SIZE>"));
    for unused in ["--max-in-flight", "--subject", "--prune-after", "--metrics-addr", "--on-invalid"] {
        assert!(!status.contains(unused), "status --help lists {unused}:\n{status}");
    }
    let teardown = help(&["teardown", "--help"], &[]);
    assert!(teardown.contains("pending"), "teardown --force names pending events:\n{teardown}");
    assert!(!teardown.contains("--payload-column"), "{teardown}");
    // A hidden option is still accepted (design.md §4): it is validated, not refused as unknown.
    let out = walrelay(&["status", "--progress-interval", "0s"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--progress-interval") && !stderr(&out).contains("unexpected"), "{}", stderr(&out));
}
