//! The MCP tool servers an attempt's agent is given: its profile's `mcp = [...]` (the
//! daemon's `[mcp.NAME]`) and, with `mcp_self = true`, orch's own server (`orchctl mcp`,
//! carrying the attempt's `ORCH_*` ids so what the agent submits through it becomes a
//! sub-objective of this attempt). Written per attempt as Claude Code's `--mcp-config`
//! JSON (`{mcp_config}` in the command template gives its path) and, for Codex profiles,
//! as `-c mcp_servers.NAME.*=...` arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::config::{AgentProfile, Config, McpServerConfig};

/// The name orch's own server has in an agent's MCP configuration.
pub const SELF_NAME: &str = "orch";

/// The program of orch's own MCP server: `orchctl` beside the running `orchd`, else
/// `orchctl` on the agent's `PATH`.
pub fn orchctl_program() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("orchctl")))
        .filter(|p| p.is_file())
        .map_or_else(|| "orchctl".to_string(), |p| p.display().to_string())
}

/// The servers a profile gets, by name, as stdio (`command`, `env`) or HTTP (`url`)
/// definitions; orch's own last, with the attempt's ids.
pub fn servers(
    cfg: &Config,
    profile: &AgentProfile,
    ids: &[(&str, String)],
    orchctl: &str,
) -> BTreeMap<String, McpServerConfig> {
    let mut out: BTreeMap<String, McpServerConfig> = profile
        .mcp
        .iter()
        .filter_map(|name| Some((name.clone(), cfg.mcp.get(name)?.clone())))
        .collect();
    if profile.mcp_self {
        let socket = cfg.socket().display().to_string();
        let mut env: BTreeMap<String, String> = ids
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        env.insert("ORCH_SOCKET".into(), socket.clone());
        out.insert(
            SELF_NAME.into(),
            McpServerConfig {
                command: vec![orchctl.into(), "--socket".into(), socket, "mcp".into()],
                env,
                url: None,
            },
        );
    }
    out
}

/// Claude Code's `--mcp-config` JSON (`{"mcpServers": {...}}`) for these servers.
pub fn claude_config(servers: &BTreeMap<String, McpServerConfig>) -> String {
    let entries: serde_json::Map<String, Value> = servers
        .iter()
        .map(|(name, s)| {
            let v = match (&s.url, s.command.split_first()) {
                (Some(url), _) => json!({"type": "http", "url": url}),
                (None, Some((program, args))) => {
                    json!({"type": "stdio", "command": program, "args": args, "env": s.env})
                }
                (None, None) => json!({}),
            };
            (name.clone(), v)
        })
        .collect();
    let doc = json!({ "mcpServers": entries });
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{\"mcpServers\":{}}".into())
}

/// Codex's equivalent: `-c mcp_servers.NAME.command=...` overrides (TOML values).
pub fn codex_args(servers: &BTreeMap<String, McpServerConfig>) -> Vec<String> {
    let toml_str = |s: &str| toml::Value::String(s.to_string()).to_string();
    let mut out = Vec::new();
    for (name, s) in servers {
        let key = format!("mcp_servers.{name}");
        if let Some(url) = &s.url {
            out.extend(["-c".into(), format!("{key}.url={}", toml_str(url))]);
            continue;
        }
        let Some((program, args)) = s.command.split_first() else {
            continue;
        };
        out.extend(["-c".into(), format!("{key}.command={}", toml_str(program))]);
        let list: Vec<String> = args.iter().map(|a| toml_str(a)).collect();
        out.extend(["-c".into(), format!("{key}.args=[{}]", list.join(", "))]);
        if !s.env.is_empty() {
            let pairs: Vec<String> = s
                .env
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
                .collect();
            out.extend(["-c".into(), format!("{key}.env={{ {} }}", pairs.join(", "))]);
        }
    }
    out
}

/// Where attempt `number` of step `step_id` finds its MCP configuration: beside its
/// prompt file, in the daemon's private prompts directory.
pub fn config_file(prompts_dir: &Path, step_id: &str, number: u32) -> PathBuf {
    prompts_dir.join(format!("{step_id}-{number}.mcp.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(servers: &[(&str, McpServerConfig)]) -> Config {
        let mut cfg = Config {
            socket: Some(PathBuf::from("/run/orch/orchd.sock")),
            ..Config::default()
        };
        for (n, s) in servers {
            cfg.mcp.insert(n.to_string(), s.clone());
        }
        cfg
    }

    fn fs_server() -> McpServerConfig {
        McpServerConfig {
            command: vec!["npx".into(), "server-filesystem".into(), "/srv/a b".into()],
            env: [("TOKEN".to_string(), "x\"y".to_string())].into(),
            url: None,
        }
    }

    #[test]
    fn a_profile_gets_its_servers_and_orch_itself() {
        let web = McpServerConfig {
            url: Some("http://127.0.0.1:9/mcp".into()),
            ..Default::default()
        };
        let cfg = cfg_with(&[("fs", fs_server()), ("web", web), ("unused", fs_server())]);
        let mut profile = crate::config::shell_profile();
        profile.mcp = vec!["fs".into(), "web".into()];
        profile.mcp_self = true;
        let ids = [("ORCH_OBJECTIVE_ID", "O".to_string())];
        let s = servers(&cfg, &profile, &ids, "/usr/bin/orchctl");
        assert_eq!(s.keys().collect::<Vec<_>>(), ["fs", "orch", "web"]);
        let orch = &s["orch"];
        assert_eq!(
            orch.command,
            [
                "/usr/bin/orchctl",
                "--socket",
                "/run/orch/orchd.sock",
                "mcp"
            ]
        );
        assert_eq!(orch.env["ORCH_OBJECTIVE_ID"], "O");
        assert_eq!(orch.env["ORCH_SOCKET"], "/run/orch/orchd.sock");

        let claude: Value = serde_json::from_str(&claude_config(&s)).unwrap_or_default();
        assert_eq!(claude["mcpServers"]["fs"]["command"], "npx");
        assert_eq!(claude["mcpServers"]["fs"]["args"][1], "/srv/a b");
        assert_eq!(claude["mcpServers"]["fs"]["env"]["TOKEN"], "x\"y");
        assert_eq!(claude["mcpServers"]["web"]["type"], "http");
        assert_eq!(claude["mcpServers"]["orch"]["args"][2], "mcp");

        let codex = codex_args(&s);
        assert!(codex.chunks(2).all(|c| c[0] == "-c"), "{codex:?}");
        let values: Vec<&str> = codex
            .iter()
            .skip(1)
            .step_by(2)
            .map(String::as_str)
            .collect();
        assert!(
            values.contains(&r#"mcp_servers.fs.command="npx""#),
            "{values:?}"
        );
        assert!(
            values.contains(&r#"mcp_servers.fs.args=["server-filesystem", "/srv/a b"]"#),
            "{values:?}"
        );
        assert!(
            values.contains(&r#"mcp_servers.fs.env={ "TOKEN" = 'x"y' }"#),
            "{values:?}"
        );
        assert!(values.contains(&r#"mcp_servers.web.url="http://127.0.0.1:9/mcp""#));
        // Each value is TOML that parses back to what was meant.
        for v in values {
            let (_, value) = v.split_once('=').unwrap_or_default();
            let parsed: Result<toml::Table, _> = toml::from_str(&format!("x = {value}"));
            assert!(parsed.is_ok(), "{v}: {parsed:?}");
        }
    }

    #[test]
    fn no_servers_without_mcp_in_the_profile() {
        let cfg = cfg_with(&[("fs", fs_server())]);
        let profile = crate::config::shell_profile();
        assert!(servers(&cfg, &profile, &[], "orchctl").is_empty());
    }
}
