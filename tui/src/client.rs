//! Where snapshots come from and where actions go: the [`Source`] and [`Actions`] traits, and
//! their HTTP implementations on the collector's stats API (`tapwire-client`, blocking, short
//! timeouts).
//! Closures implement both traits, which is how the inline UI of `tapwire collect` reads the
//! engine's snapshot directly and how tests inject fakes.

use std::sync::Arc;
use std::time::Duration;

use tapwire_api_types::{Action, MAX_PAGE, Message, SESSIONS_PATH, Snapshot};
pub use tapwire_client::base_url;
use tapwire_client::{Answer, Client, query_string, segment};

/// Where saves are asked for.
pub const SAVE_PATH: &str = "/api/v1/packets/save";

/// Gives the collector's latest snapshot, or says why it cannot (shown as "disconnected").
pub trait Source {
    fn fetch(&mut self) -> Result<Arc<Snapshot>, String>;
}

impl<F: FnMut() -> Result<Arc<Snapshot>, String>> Source for F {
    fn fetch(&mut self) -> Result<Arc<Snapshot>, String> {
        self()
    }
}

/// Carries out an action on a session; `Ok` and `Err` hold the collector's message.
pub trait Actions {
    fn act(&mut self, session: &str, action: Action) -> Result<String, String>;

    /// Saves the session's last `minutes` into a file the collector names; `Ok` says where.
    fn save(&mut self, session: &str, minutes: u32) -> Result<String, String> {
        let _ = (session, minutes);
        Err("saving needs the collector's API: use tapwire top".into())
    }
}

impl<F: FnMut(&str, Action) -> Result<String, String>> Actions for F {
    fn act(&mut self, session: &str, action: Action) -> Result<String, String> {
        self(session, action)
    }
}

/// The largest page accepted: 1000 sessions with [`SOURCES_PER_SESSION`] sources each.
const MAX_BODY_BYTES: u64 = 256 << 20;
/// Sources asked for per session: more than a terminal shows; the count says how many more.
const SOURCES_PER_SESSION: usize = 256;
/// Pages read per refresh at most (of [`MAX_PAGE`] sessions): past that the UI shows the
/// sessions read and the totals, which count them all.
const MAX_PAGES: usize = 16;

fn client(base: &str, token: Option<String>, timeout: Duration, max_body_bytes: u64) -> Client {
    match Client::builder(base)
        .token(token)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(1)))
        .max_body_bytes(max_body_bytes)
        .build()
    {
        Ok(c) => c,
        // Only a CA file can fail, and none is given.
        Err(e) => unreachable!("HTTP client without a CA: {e}"),
    }
}

/// Polls `GET /api/v1/sessions`, following its pages, with the bearer token when one is given
/// (a collector with a control plane wants a viewer's from other hosts).
pub struct HttpSource {
    client: Client,
}

impl HttpSource {
    pub fn new(base: &str) -> HttpSource {
        HttpSource::with(base, None)
    }

    pub fn with_token(self, token: Option<String>) -> HttpSource {
        HttpSource::with(self.client.base(), token)
    }

    fn with(base: &str, token: Option<String>) -> HttpSource {
        HttpSource {
            client: client(base, token, Duration::from_secs(2), MAX_BODY_BYTES),
        }
    }
}

impl HttpSource {
    fn page(&self, after: Option<&str>) -> Result<Snapshot, String> {
        let mut path = format!("{SESSIONS_PATH}?limit={MAX_PAGE}&sources={SOURCES_PER_SESSION}");
        if let Some(a) = after {
            path.push_str("&after=");
            path.push_str(&segment(a));
        }
        let answer = self
            .client
            .send("GET", &path, None::<&()>)
            .map_err(|f| f.reason)?;
        if !answer.is_success() {
            return Err(format!(
                "{}{SESSIONS_PATH} answered {}",
                self.client.base(),
                answer.status_line()
            ));
        }
        serde_json::from_str(&answer.body).map_err(|e| format!("not a tapwire snapshot: {e}"))
    }
}

impl Source for HttpSource {
    /// The first page's snapshot with the sessions of the pages that follow it; its `page`
    /// says where reading stopped (`next` is `None` when every page was read).
    fn fetch(&mut self) -> Result<Arc<Snapshot>, String> {
        let mut snap = self.page(None)?;
        let mut next = snap.page.as_ref().and_then(|p| p.next.clone());
        for _ in 1..MAX_PAGES {
            let Some(after) = next.take() else { break };
            let more = self.page(Some(&after))?;
            next = more.page.and_then(|p| p.next);
            snap.sessions.extend(more.sessions);
        }
        if let Some(p) = snap.page.as_mut() {
            p.next = next;
        }
        Ok(Arc::new(snap))
    }
}

/// `POST /api/v1/sessions/{name}/{action}` and `POST /api/v1/packets/save`, with the bearer
/// token when one is given (the collector accepts actions from localhost without one).
pub struct HttpActions {
    client: Client,
    /// For saves, which read captures and may take a while.
    saves: Client,
}

/// How long a save may take before the UI stops waiting (the collector finishes it anyway).
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);

impl HttpActions {
    pub fn new(base: &str, token: Option<String>) -> HttpActions {
        HttpActions {
            // The collector waits up to 5 s for its engine to answer.
            client: client(base, token.clone(), Duration::from_secs(6), 1 << 20),
            saves: client(base, token, SAVE_TIMEOUT, 1 << 20),
        }
    }
}

/// The collector's message out of an answer, `Err` unless it says ok.
fn message(answer: Result<Answer, tapwire_client::Failed>, what: &str) -> Result<String, String> {
    let answer = match answer {
        Ok(a) => a,
        // An answer whose body could not be read: judged by its status alone.
        Err(f) if f.status != 0 => Answer {
            status: f.status,
            body: String::new(),
        },
        Err(f) => return Err(f.reason),
    };
    let status = answer.status_line();
    match serde_json::from_str::<Message>(&answer.body) {
        Ok(m) if m.ok && answer.is_success() => Ok(m.message),
        Ok(m) => Err(m.message),
        Err(_) => Err(format!("{what}: collector answered {status}")),
    }
}

impl Actions for HttpActions {
    fn act(&mut self, session: &str, action: Action) -> Result<String, String> {
        let verb = match action {
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::Rotate => "rotate",
        };
        let path = format!("{SESSIONS_PATH}/{}/{verb}", segment(session));
        message(
            self.client.send("POST", &path, None::<&()>),
            &format!("{verb} {session}"),
        )
    }

    fn save(&mut self, session: &str, minutes: u32) -> Result<String, String> {
        let path = format!(
            "{SAVE_PATH}{}",
            query_string(&[
                ("session", Some(session)),
                ("minutes", Some(&minutes.to_string())),
            ])
        );
        message(
            self.saves.send("POST", &path, None::<&()>),
            &format!("save {session}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot HTTP server on localhost: answers one request with `status` and `body`
    /// and hands back the request it got.
    fn serve_once(status: &str, body: String) -> (String, std::thread::JoinHandle<String>) {
        let (base, t) = serve(vec![(status.to_string(), body)]);
        (
            base,
            std::thread::spawn(move || t.join().unwrap().remove(0)),
        )
    }

    /// An HTTP server on localhost that answers one request per answer, in order, each on
    /// its own connection, and hands back the requests it got.
    fn serve(answers: Vec<(String, String)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for (status, body) in answers {
                let (mut conn, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(reply.as_bytes()).unwrap();
                requests.push(String::from_utf8_lossy(&req).into_owned());
            }
            requests
        });
        (base, t)
    }

    #[test]
    fn snapshots_are_fetched_and_parsed() {
        let snap = crate::fixture::snapshot(3);
        let (base, server) = serve_once("200 OK", serde_json::to_string(&snap).unwrap());
        let got = HttpSource::new(&base).fetch().unwrap();
        assert_eq!(*got, snap);
        let req = server.join().unwrap();
        assert!(
            req.starts_with("GET /api/v1/sessions?limit=1000&sources=256 HTTP/1.1\r\n"),
            "{req}"
        );
    }

    #[test]
    fn every_page_of_sessions_is_read() {
        let snap = crate::fixture::snapshot(3);
        let n = snap.sessions.len();
        assert!(n >= 3);
        // Three pages: the first two sessions, the next, the rest; each with its cursor.
        let page = |from: usize, to: usize| {
            let mut p = snap.clone();
            p.sessions = snap.sessions[from..to].to_vec();
            p.page = Some(tapwire_api_types::Page {
                total: n as u64,
                limit: 2,
                next: (to < n).then(|| snap.sessions[to - 1].name.clone()),
            });
            ("200 OK".to_string(), serde_json::to_string(&p).unwrap())
        };
        let (base, server) = serve(vec![page(0, 2), page(2, 3), page(3, n)]);
        let got = HttpSource::new(&base).fetch().unwrap();
        assert_eq!(got.sessions, snap.sessions);
        assert_eq!(
            got.page.as_ref().map(|p| (p.total, p.next.clone())),
            Some((n as u64, None))
        );
        let reqs = server.join().unwrap();
        let after = format!("&after={} ", segment(&snap.sessions[2].name));
        assert!(reqs[2].contains(&after), "{}", reqs[2]);
    }

    #[test]
    fn snapshots_are_fetched_with_the_token_when_given() {
        let snap = crate::fixture::snapshot(1);
        let (base, server) = serve_once("200 OK", serde_json::to_string(&snap).unwrap());
        HttpSource::new(&base)
            .with_token(Some("tw_viewer".into()))
            .fetch()
            .unwrap();
        let req = server.join().unwrap().to_ascii_lowercase();
        assert!(
            req.contains("\r\nauthorization: bearer tw_viewer\r\n"),
            "{req}"
        );
        let (base, server) = serve_once("200 OK", serde_json::to_string(&snap).unwrap());
        HttpSource::new(&base).fetch().unwrap();
        assert!(
            !server
                .join()
                .unwrap()
                .to_ascii_lowercase()
                .contains("authorization")
        );
    }

    #[test]
    fn a_wrong_answer_is_an_error_not_a_panic() {
        let (base, server) = serve_once("200 OK", "{\"not\": \"a snapshot\"}".into());
        let e = HttpSource::new(&base).fetch().unwrap_err();
        assert!(e.starts_with("not a tapwire snapshot"), "{e}");
        server.join().unwrap();
        let (base, server) = serve_once("503 Service Unavailable", String::new());
        let e = HttpSource::new(&base).fetch().unwrap_err();
        assert!(e.contains("503"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn actions_post_to_the_session_with_the_token() {
        let ok = r#"{"ok":true,"message":"session fd77::11_erspan-ii_100 disabled"}"#;
        let (base, server) = serve_once("200 OK", ok.into());
        let mut a = HttpActions::new(&base, Some("s3cret".into()));
        let msg = a.act("fd77::11_erspan-ii_100", Action::Disable).unwrap();
        assert_eq!(msg, "session fd77::11_erspan-ii_100 disabled");
        let req = server.join().unwrap().to_lowercase();
        assert!(
            req.starts_with("post /api/v1/sessions/fd77%3a%3a11_erspan-ii_100/disable http/1.1"),
            "{req}"
        );
        assert!(
            req.contains("\r\nauthorization: bearer s3cret\r\n"),
            "{req}"
        );

        // Refused: the collector's message comes back as the error; no token, no header.
        let no = r#"{"ok":false,"message":"actions need a localhost connection or the API token"}"#;
        let (base, server) = serve_once("403 Forbidden", no.into());
        let e = HttpActions::new(&base, None)
            .act("edge", Action::Rotate)
            .unwrap_err();
        assert_eq!(e, "actions need a localhost connection or the API token");
        let req = server.join().unwrap().to_lowercase();
        assert!(
            req.starts_with("post /api/v1/sessions/edge/rotate "),
            "{req}"
        );
        assert!(!req.contains("authorization"), "{req}");
    }

    #[test]
    fn saves_post_the_session_and_minutes_and_give_the_collectors_message() {
        let ok = r#"{"ok":true,"message":"saved 3 packets of the last 15 min of web 2 to /out/saved/x.pcapng","path":"/out/saved/x.pcapng","packets":3,"bytes":900,"notes":[]}"#;
        let (base, server) = serve_once("200 OK", ok.into());
        let msg = HttpActions::new(&base, Some("op".into()))
            .save("web 2", 15)
            .unwrap();
        assert!(msg.ends_with("to /out/saved/x.pcapng"), "{msg}");
        let req = server.join().unwrap().to_lowercase();
        assert!(
            req.starts_with("post /api/v1/packets/save?session=web%202&minutes=15 http/1.1"),
            "{req}"
        );
        assert!(req.contains("\r\nauthorization: bearer op\r\n"), "{req}");
        let no = r#"{"ok":false,"message":"an operator or admin token is needed"}"#;
        let (base, server) = serve_once("403 Forbidden", no.into());
        let e = HttpActions::new(&base, None).save("web", 5).unwrap_err();
        assert_eq!(e, "an operator or admin token is needed");
        server.join().unwrap();
    }

    #[test]
    fn a_closed_port_reads_as_connection_refused() {
        // Bind then drop to find a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut s = HttpSource::new(&base_url(&format!("127.0.0.1:{port}")));
        assert_eq!(s.fetch().unwrap_err(), "connection refused");
    }
}
