//! What a Postgres server error means for walrelay, decided by its SQLSTATE, never by its message text (which
//! follows the server's `lc_messages`).
//!
//! In: a SQLSTATE and the server's message, from tokio-postgres' `DbError` or from pgwire-replication's server error
//! (which keeps the code only in its text, `message (SQLSTATE XXXXX)`, see [`pgwire_code`]), plus what walrelay was
//! doing. Out: the [`SourceError`] to report, whose [`SourceError::is_transient`] then says whether to retry.
//! Codes: <https://www.postgresql.org/docs/current/errcodes-appendix.html>.

use crate::{
    config::{
        postgres::{tls::SslMode, PgUrl},
        quote_ident,
    },
    source::SourceError,
};

/// What walrelay was doing when the server refused.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Doing<'a> {
    /// Opening a connection (startup and authentication).
    Connecting,
    /// Running a statement, described for the user.
    Statement(&'a str),
    /// A statement of logical decoding (creating or copying a slot): 0A000 here means decoding is unavailable.
    Decoding(&'a str),
    /// The replication session of `slot`, reading `publication`.
    Replicating {
        /// Slot name.
        slot: &'a str,
        /// Publication name.
        publication: &'a str,
    },
}

/// The one place that turns a server error into what it means.
///
/// `url` is the connection's settings, when known (statement errors of an open connection come without).
pub(crate) fn classify(code: &str, message: &str, doing: Doing<'_>, url: Option<&PgUrl>) -> SourceError {
    let reason = format!("{message} ({code})");
    let user = url.map(PgUrl::user);
    let ident = url.map_or_else(|| "<role>".to_owned(), |u| quote_ident(&u.user()));
    let dbname = url.map_or_else(|| "of --pg-url".to_owned(), PgUrl::dbname);
    let redacted = url.map_or_else(|| "--pg-url".to_owned(), ToString::to_string);
    match code {
        // invalid_password, invalid_authorization_specification (also: no pg_hba.conf line, unknown role).
        "28P01" | "28000" => {
            return SourceError::Auth { user: user.unwrap_or_default(), reason, remedy: auth_remedy(url) }
        }
        // invalid_catalog_name
        "3D000" => return SourceError::UnknownDatabase { database: dbname, reason },
        // insufficient_privilege
        "42501" => {
            let (context, remedy) = match doing {
                Doing::Connecting => {
                    ("connecting".to_owned(), format!("GRANT CONNECT ON DATABASE {} TO {ident}", quote_ident(&dbname)))
                }
                Doing::Replicating { .. } | Doing::Decoding(_) => (
                    match doing {
                        Doing::Decoding(what) => what.to_owned(),
                        _ => "starting replication".to_owned(),
                    },
                    format!("ALTER ROLE {ident} WITH REPLICATION (see docs/security.md)"),
                ),
                Doing::Statement(what) => (
                    what.to_owned(),
                    "grant the role of --pg-url what this needs (docs/security.md, \"A least-privilege role for \
                     run\", lists the GRANTs), or have the table's owner run `walrelay setup` once"
                        .to_owned(),
                ),
            };
            return SourceError::Privilege { user, context, reason, remedy };
        }
        // feature_not_supported: logical decoding on a server in recovery (a standby below PostgreSQL 16).
        "0A000" if matches!(doing, Doing::Decoding(_) | Doing::Replicating { .. }) => {
            return SourceError::DecodingUnavailable { reason }
        }
        _ => {}
    }
    if let Doing::Replicating { slot, publication } = doing {
        match code {
            // undefined_object: the slot, or (when decoding starts) the publication. Which one: the quoted
            // identifier in the message (identifiers are not translated).
            "42704" if message.contains(&format!("\"{publication}\"")) && !message.contains(&format!("\"{slot}\"")) => {
                return SourceError::MissingPublication {
                    publication: publication.to_owned(),
                    table: "<outbox table>".into(),
                }
            }
            "42704" => {
                return SourceError::MissingSlot {
                    slot: slot.to_owned(),
                    server: url.map(PgUrl::servers).unwrap_or_default(),
                    detail: String::new(),
                }
            }
            // object_in_use: another walsender holds the slot; its pid is the number in the message.
            "55006" => return SourceError::SlotActive { slot: slot.to_owned(), pid: last_number(message) },
            // object_not_in_prerequisite_state: the slot was invalidated (WAL removed), or belongs to another
            // database.
            "55000" => {
                return SourceError::Replication {
                    reason: format!(
                        "replication slot {slot} cannot be used: {reason}; if it was invalidated, drop it (walrelay \
                         teardown) and run `walrelay setup`; if it belongs to another database, choose another --slot"
                    ),
                    transient: false,
                }
            }
            _ => {}
        }
        return SourceError::Replication { reason, transient: is_transient_code(code) };
    }
    match doing {
        Doing::Connecting if is_transient_code(code) => SourceError::Connect { url: redacted, reason },
        Doing::Connecting => SourceError::Query { context: "connecting".into(), reason, code: Some(code.to_owned()) },
        Doing::Statement(what) | Doing::Decoding(what) => {
            SourceError::Query { context: what.to_owned(), reason, code: Some(code.to_owned()) }
        }
        Doing::Replicating { .. } => SourceError::Replication { reason, transient: is_transient_code(code) },
    }
}

/// Classes where retrying can help: connection exception (08), insufficient resources (53, e.g. too many
/// connections), operator intervention (57: shutdown, "the database system is starting up"), system error (58).
pub(crate) fn is_transient_code(code: &str) -> bool {
    ["08", "53", "57", "58"].iter().any(|class| code.starts_with(class))
}

/// The remedy of an authentication failure, for the way this URL authenticates.
fn auth_remedy(url: Option<&PgUrl>) -> String {
    let Some(url) = url else {
        return "check the user and password in --pg-url / WALRELAY_PG_URL or --pg-password-file".into();
    };
    let mut remedy = format!(
        "check that role {} exists and its password ({}), and that pg_hba.conf has a line for this host, database \
         and user",
        url.user(),
        if url.password_from_file() {
            "--pg-password-file"
        } else {
            "in --pg-url / WALRELAY_PG_URL, or --pg-password-file"
        }
    );
    if url.tls().has_client_cert() {
        remedy.push_str("; with certificate authentication the client certificate (sslcert/sslkey) must be signed by the server's ssl_ca_file and its CN must be the user name");
    }
    if url.tls().mode() == SslMode::Disable {
        remedy.push_str(
            "; a server that accepts only TLS (hostssl lines) refuses sslmode=disable: use sslmode=verify-full",
        );
    }
    remedy
}

/// The SQLSTATE in a pgwire-replication server error: it formats ErrorResponse as `message (SQLSTATE XXXXX)`.
pub(crate) fn pgwire_code(text: &str) -> Option<(&str, &str)> {
    let start = text.rfind("(SQLSTATE ")?;
    let code = text.get(start + "(SQLSTATE ".len()..)?.strip_suffix(')')?;
    (code.len() == 5 && code.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| (code, text.get(..start).unwrap_or_default().trim_end()))
}

/// The last decimal number in a message (a pid), 0 when there is none.
fn last_number(message: &str) -> i32 {
    message.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty()).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed() -> PgUrl {
        PgUrl::parse("postgres://relay@db:5432/app?sslmode=disable").unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn codes_decide_whatever_the_language() {
        let p = parsed();
        let u = Some(&p);
        let auth = classify("28P01", "Passwort-Authentifizierung fehlgeschlagen", Doing::Connecting, u);
        assert!(matches!(&auth, SourceError::Auth { user, .. } if user == "relay"));
        assert!(!auth.is_transient());
        assert!(auth.to_string().contains("authentication"));
        let db = classify("3D000", "Datenbank existiert nicht", Doing::Connecting, u);
        assert!(matches!(db, SourceError::UnknownDatabase { .. }) && !db.is_transient());
        let repl = Doing::Replicating { slot: "walrelay", publication: "walrelay" };
        let priv_ = classify("42501", "muss Superuser sein", repl, u);
        assert!(matches!(&priv_, SourceError::Privilege { remedy, .. } if remedy.contains("WITH REPLICATION")));
        let rec = classify("0A000", "logische Dekodierung ...", repl, u);
        assert!(matches!(rec, SourceError::DecodingUnavailable { .. }) && !rec.is_transient());
        assert!(matches!(
            classify("55006", "Slot ist aktiv für PID 4711", repl, u),
            SourceError::SlotActive { pid: 4711, .. }
        ));
        assert!(classify("57P01", "Verbindung beendet", repl, u).is_transient());
        assert!(classify("57P03", "startet", Doing::Connecting, u).is_transient());
        assert!(!classify("42601", "syntax", repl, u).is_transient());
    }

    #[test]
    fn pgwire_server_errors_carry_their_code() {
        assert_eq!(
            pgwire_code("password authentication failed for user \"x\" (SQLSTATE 28P01)"),
            Some(("28P01", "password authentication failed for user \"x\""))
        );
        assert_eq!(pgwire_code("unknown server error"), None);
    }
}
