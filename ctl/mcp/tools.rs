//! `orchctl tools [AGENT]`: connects to each MCP tool server the daemon's agent profiles
//! are given (`[mcp.NAME]`, and orch's own for `mcp_self`), as an MCP client and as the
//! calling user, with a timeout; lists each one's tools, and reports the servers that fail
//! to start or answer, so a broken server is found before an expensive agent run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use orch_proto::v1::{ListToolServersRequest, ToolServer};
use rmcp::ServiceExt;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::cli::ToolsArgs;
use crate::client::Client;
use crate::error::{CtlError, Result};
use crate::output::{self, Format};

/// The name orch's own server goes by (as in the agents' MCP configuration).
const SELF_NAME: &str = "orch";
/// The most of a failing server's stderr quoted in its error.
const STDERR_TAIL: usize = 400;
/// What the daemon puts in place of a secret it does not show the caller.
const REDACTED: &str = "<redacted>";

/// One server's answer.
struct Report {
    name: String,
    agents: Vec<String>,
    result: std::result::Result<Vec<(String, String)>, String>,
}

/// Runs `orchctl tools`.
pub async fn run(args: ToolsArgs, socket: &Path, format: Format) -> Result<()> {
    let mut client = Client::connect(socket).await?;
    let r = client
        .api
        .list_tool_servers(ListToolServersRequest {})
        .await;
    let answer = client.check(r)?;
    if let Some(agent) = &args.agent
        && !answer.agents.iter().any(|a| &a.agent == agent)
    {
        let known: Vec<&str> = answer.agents.iter().map(|a| a.agent.as_str()).collect();
        return Err(CtlError::Usage(format!(
            "no agent profile `{agent}` (known: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )));
    }
    // Which servers to try, and for which agents.
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in &answer.agents {
        if args.agent.as_ref().is_some_and(|x| x != &a.agent) {
            continue;
        }
        for s in &a.servers {
            wanted.entry(s.clone()).or_default().push(a.agent.clone());
        }
        if a.mcp_self {
            wanted
                .entry(SELF_NAME.into())
                .or_default()
                .push(a.agent.clone());
        }
    }
    if args.agent.is_none() {
        for s in &answer.servers {
            wanted.entry(s.name.clone()).or_default();
        }
    }
    let timeout = Duration::from_millis(args.timeout);
    let mut reports = Vec::new();
    for (name, agents) in wanted {
        let server = answer.servers.iter().find(|s| s.name == name);
        let result = match (server, name.as_str()) {
            (Some(s), _) => match withheld(s) {
                Some(why) => Err(why),
                None => probe(s, socket, timeout).await,
            },
            (None, SELF_NAME) => {
                let me = self_server(socket);
                probe(&me, socket, timeout).await
            }
            (None, _) => Err("not configured in the daemon ([mcp.NAME] missing)".into()),
        };
        reports.push(Report {
            name,
            agents,
            result,
        });
    }
    print(&reports, format, args.agent.as_deref())?;
    let failed = reports.iter().filter(|r| r.result.is_err()).count();
    if failed > 0 {
        return Err(CtlError::Failed(format!(
            "{failed} of {} tool servers failed",
            reports.len()
        )));
    }
    Ok(())
}

/// Why a server is not tried: the daemon withheld its secrets from this caller (they are
/// for root and the daemon's own user), and starting it without them would only fail
/// somewhere less clear.
fn withheld(s: &ToolServer) -> Option<String> {
    let mut keys: Vec<&str> = s
        .env
        .iter()
        .filter(|(_, v)| v.as_str() == REDACTED)
        .map(|(k, _)| k.as_str())
        .collect();
    if keys.is_empty() {
        return None;
    }
    keys.sort_unstable();
    Some(format!(
        "not tried: its environment holds secrets ({}) that orchd shows only to root and \
         its own user; run `orchctl tools` as one of them",
        keys.join(", ")
    ))
}

/// orch's own server, as agents with `mcp_self` get it.
fn self_server(socket: &Path) -> ToolServer {
    let program = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "orchctl".into());
    ToolServer {
        name: SELF_NAME.into(),
        command: vec![
            program,
            "--socket".into(),
            socket.display().to_string(),
            "mcp".into(),
        ],
        env: Default::default(),
        url: String::new(),
    }
}

/// Connects to one server and lists its tools: `(name, description)`s, or why not.
async fn probe(
    s: &ToolServer,
    _socket: &Path,
    timeout: Duration,
) -> std::result::Result<Vec<(String, String)>, String> {
    if !s.url.is_empty() {
        let transport = StreamableHttpClientTransport::from_uri(s.url.clone());
        let url = &s.url;
        let work = async {
            let client = ()
                .serve(transport)
                .await
                .map_err(|e| format!("cannot reach {url}: {}", root_cause(&e)))?;
            let tools = client
                .peer()
                .list_all_tools()
                .await
                .map_err(|e| format!("{url}: {}", root_cause(&e)));
            let _ = client.cancel().await;
            tools
        };
        return match tokio::time::timeout(timeout, work).await {
            Ok(r) => r.map(describe_tools),
            Err(_) => Err(format!("{} did not answer within {}", s.url, secs(timeout))),
        };
    }
    let Some((program, rest)) = s.command.split_first() else {
        return Err("no command to start".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest).envs(&s.env);
    let spawned = TokioChildProcess::builder(cmd)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let (transport, stderr) = spawned;
    // What the server says on stderr, for the error message if it fails.
    let stderr_task = stderr.map(|mut err| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = (&mut err).take(64 * 1024).read_to_end(&mut buf).await;
            buf
        })
    });
    let work = async {
        let client = ().serve(transport).await.map_err(|e| e.to_string())?;
        let tools = client
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| e.to_string());
        let _ = client.cancel().await;
        tools
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r.map(describe_tools),
        Err(_) => Err(format!(
            "`{program}` did not answer within {}",
            secs(timeout)
        )),
    };
    match result {
        Ok(tools) => Ok(tools),
        Err(e) => {
            let said = match stderr_task {
                Some(task) => match tokio::time::timeout(Duration::from_secs(2), task).await {
                    Ok(Ok(buf)) => tail(&String::from_utf8_lossy(&buf)),
                    _ => String::new(),
                },
                None => String::new(),
            };
            if said.is_empty() {
                Err(e)
            } else {
                Err(format!("{e}; its stderr: {said}"))
            }
        }
    }
}

/// The innermost cause of an error (the OS's or the peer's own words).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    let text = last.to_string();
    // The SDK's transport errors name its Rust types before the words that matter.
    match text.split_once("Client error: ") {
        Some((_, rest)) => rest
            .trim_end_matches(", when send initialize request")
            .to_string(),
        None => text,
    }
}

fn describe_tools(tools: Vec<rmcp::model::Tool>) -> Vec<(String, String)> {
    tools
        .into_iter()
        .map(|t| {
            let d = t.description.map(|d| d.to_string()).unwrap_or_default();
            (t.name.to_string(), d)
        })
        .collect()
}

fn secs(d: Duration) -> String {
    orch_proto::units::format_duration_ms(d.as_millis() as u64)
}

/// The end of a server's stderr, on one line.
fn tail(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let n = flat.chars().count();
    if n <= STDERR_TAIL {
        flat
    } else {
        let skip = n - STDERR_TAIL;
        format!("...{}", flat.chars().skip(skip).collect::<String>())
    }
}

fn print(reports: &[Report], format: Format, agent: Option<&str>) -> Result<()> {
    match format {
        Format::Json => {
            let list: Vec<Value> = reports
                .iter()
                .map(|r| {
                    let (tools, error) = match &r.result {
                        Ok(t) => (
                            t.iter()
                                .map(|(n, d)| json!({"name": n, "description": d}))
                                .collect(),
                            Value::Null,
                        ),
                        Err(e) => (Vec::new(), Value::String(e.clone())),
                    };
                    json!({
                        "server": r.name,
                        "agents": r.agents,
                        "ok": r.result.is_ok(),
                        "error": error,
                        "tools": tools,
                    })
                })
                .collect();
            output::json_pretty(&Value::Array(list))
        }
        Format::Table => {
            if reports.is_empty() {
                let what = match agent {
                    Some(a) => format!("agent `{a}` is given no MCP tool servers"),
                    None => "no MCP tool servers are configured".into(),
                };
                return output::line(&what);
            }
            let mut rows = Vec::new();
            for r in reports {
                match &r.result {
                    Ok(tools) if tools.is_empty() => {
                        rows.push(vec![r.name.clone(), "-".into(), "(no tools)".into()]);
                    }
                    Ok(tools) => {
                        for (n, d) in tools {
                            let d = output::truncate(
                                &d.split_whitespace().collect::<Vec<_>>().join(" "),
                                70,
                            );
                            rows.push(vec![r.name.clone(), n.clone(), d]);
                        }
                    }
                    Err(e) => rows.push(vec![r.name.clone(), "FAILED".into(), e.clone()]),
                }
            }
            output::write_out(&output::table(&["SERVER", "TOOL", "DESCRIPTION"], rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_quoted_short_and_on_one_line() {
        assert_eq!(tail("a\n  b\n"), "a b");
        let long = "x".repeat(1000);
        let t = tail(&long);
        assert!(t.starts_with("...") && t.chars().count() == STDERR_TAIL + 3);
    }

    #[tokio::test]
    async fn a_server_that_cannot_start_or_exits_is_reported() {
        let server = |command: &[&str]| ToolServer {
            name: "x".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: Default::default(),
            url: String::new(),
        };
        let socket = Path::new("/nonexistent.sock");
        let t = Duration::from_secs(10);
        let e = probe(&server(&["/nonexistent/program"]), socket, t)
            .await
            .err();
        assert!(
            e.as_deref()
                .is_some_and(|e| e.starts_with("cannot start `/nonexistent/program`")),
            "{e:?}"
        );
        let e = probe(
            &server(&["sh", "-c", "echo broken-config >&2; exit 3"]),
            socket,
            t,
        )
        .await
        .err()
        .unwrap_or_default();
        assert!(e.ends_with("its stderr: broken-config"), "{e}");
        let e = probe(
            &server(&["sleep", "30"]),
            socket,
            Duration::from_millis(300),
        )
        .await
        .err()
        .unwrap_or_default();
        assert_eq!(e, "`sleep` did not answer within 300ms");
        let e = probe(&server(&[]), socket, t).await.err();
        assert_eq!(e.as_deref(), Some("no command to start"));
    }
}
