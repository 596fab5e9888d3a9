//! The `orch.v1.Orchestrator` service: thin routing from each RPC to the engine (commands),
//! the store (queries), `plans` (submit) and the stream jobs (`watch`, `logs`).

use std::collections::{HashMap, HashSet};

use tonic::{Request, Response, Status};

use orch_proto::v1 as pb;
use orch_proto::v1::orchestrator_server::Orchestrator;
use orch_proto::validate::{check_env, parallel_groups};

use super::calls::WatchQuota;
use super::convert::{resolved_plan_pb, state_filter, summary_pb, ts, usage_pb};
use super::{
    Api, BoxStream, caller, engine_status, logs, plan_status, read_objective, spec_status,
    store_status, watch,
};
use crate::engine::{Caller, Command, NewObjective, ParentClaim};
use crate::plans;

impl Api {
    /// Checks, resolves and (unless a dry run) submits an objective.
    async fn submit_inner(
        &self,
        who: Caller,
        mut req: pb::SubmitRequest,
    ) -> Result<pb::SubmitResponse, Status> {
        let spec = match (req.spec.take(), req.plan_text.is_empty()) {
            (Some(_), false) => {
                return Err(Status::invalid_argument(
                    "spec and plan_text: give one of them, not both",
                ));
            }
            (Some(spec), true) => spec,
            (None, false) => plan_spec(&req)?,
            (None, true) => {
                return Err(Status::invalid_argument(
                    "spec: missing (an objective needs a spec with steps, or plan_text)",
                ));
            }
        };
        check_env(&req.env, "env").map_err(spec_status)?;
        if req.request_id.len() > 200 {
            return Err(Status::invalid_argument(
                "request_id: longer than 200 bytes",
            ));
        }
        let cfg = self.config.borrow().clone();
        let agents: HashSet<String> = cfg.agents.keys().cloned().collect();
        let input = super::convert::objective_input(&spec, &agents).map_err(spec_status)?;
        let (resolved, planner) = match &spec.planner {
            Some(p) => {
                let p = crate::goal::PlannerInput {
                    agent: p.agent.clone(),
                    verifier: p.verifier.clone(),
                    verify_command: p.verify_command.clone(),
                    max_rounds: p.max_rounds,
                    approve_plan: p.approve_plan,
                };
                let (resolved, planner) = crate::goal::resolve_goal(&input, &p, &cfg, &req.workdir)
                    .map_err(plan_status)?;
                (resolved, Some(planner))
            }
            None => (
                plans::resolve(&input, &cfg, &req.workdir).map_err(plan_status)?,
                None,
            ),
        };
        let groups = match &planner {
            // One planner step: the rest is proposed as the rounds go.
            Some(_) => vec![resolved.steps.iter().map(|s| s.id.clone()).collect()],
            None => parallel_groups(&spec).map_err(spec_status)?,
        };
        let mut plan = resolved_plan_pb(&resolved.name, &resolved.steps, groups);
        if req.dry_run {
            // What each routed step would get now.
            let routes: Vec<crate::model::RouteSpec> = resolved
                .steps
                .iter()
                .filter_map(|s| s.route.clone())
                .collect();
            if !routes.is_empty() {
                let uid = who.uid;
                let routed = self
                    .ask(|reply| Command::RouteDryRun { routes, uid, reply })
                    .await?;
                let mut routed = routed.into_iter();
                for (st, plan_step) in plan.steps.iter_mut().zip(&resolved.steps) {
                    if let Some(r) = &plan_step.route {
                        st.route = Some(super::route_convert::route_pb(r));
                        st.routed = routed.next().map(|r| super::routing::routed_pb(&r));
                    }
                }
            }
            return Ok(pb::SubmitResponse {
                id: String::new(),
                existing: false,
                plan: Some(plan),
            });
        }
        let parent_claim = parent_claim(&req.env)?;
        let new = NewObjective {
            name: resolved.name,
            goal: resolved.goal,
            priority: resolved.priority,
            budget: resolved.budget,
            steps: resolved.steps,
            client_env: if req.env.is_empty() {
                None
            } else {
                Some(req.env.into_iter().collect())
            },
            request_id: req.request_id,
            caller: who,
            parent_claim,
            planner,
        };
        let done = self
            .ask(|reply| Command::Submit {
                new: Box::new(new),
                reply,
            })
            .await?
            .map_err(engine_status)?;
        Ok(pb::SubmitResponse {
            id: done.id,
            existing: done.existing,
            plan: Some(plan),
        })
    }
}

/// The spec of a plan sent as text (`plan_text`, `plan_format`, `plan_file`): read by
/// the same code as `orchctl submit PLAN` reads a file (`orch_proto::plan::parse_named`).
fn plan_spec(req: &pb::SubmitRequest) -> Result<pb::ObjectiveSpec, Status> {
    use orch_proto::plan::{Format, parse_named};
    let format = match pb::PlanFormat::try_from(req.plan_format) {
        Ok(pb::PlanFormat::Unspecified) => None,
        Ok(pb::PlanFormat::Toml) => Some(Format::Toml),
        Ok(pb::PlanFormat::Yaml) => Some(Format::Yaml),
        Ok(pb::PlanFormat::Json) => Some(Format::Json),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "plan_format: {} is not a plan format (TOML 1, YAML 2, JSON 3)",
                req.plan_format
            )));
        }
    };
    let file = match req.plan_file.trim() {
        "" => "plan",
        f => f,
    };
    if file.len() > 4096 || file.contains('\0') {
        return Err(Status::invalid_argument(
            "plan_file: a file name of at most 4096 bytes, without NUL",
        ));
    }
    parse_named(&req.plan_text, format, file).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The attempt a submit's environment says it comes from (`ORCH_OBJECTIVE_ID`,
/// `ORCH_STEP_ID`, `ORCH_ATTEMPT`, as every attempt gets them); the engine verifies it.
fn parent_claim(env: &HashMap<String, String>) -> Result<Option<ParentClaim>, Status> {
    let get = |k: &str| env.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(objective_id), Some(step_id), Some(attempt)) = (
        get("ORCH_OBJECTIVE_ID"),
        get("ORCH_STEP_ID"),
        get("ORCH_ATTEMPT"),
    ) else {
        return Ok(None);
    };
    let attempt = attempt.parse::<u32>().map_err(|_| {
        Status::invalid_argument(format!(
            "env: ORCH_ATTEMPT `{attempt}` is not an attempt number"
        ))
    })?;
    Ok(Some(ParentClaim {
        objective_id: objective_id.to_string(),
        step_id: step_id.to_string(),
        attempt,
    }))
}

#[tonic::async_trait]
impl Orchestrator for Api {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let who = caller(&req)?;
        let dry_run = req.get_ref().dry_run;
        let result = self.submit_inner(who, req.into_inner()).await;
        if !dry_run {
            let id = result.as_ref().map(|r| r.id.clone()).unwrap_or_default();
            self.audit(who, "submit", &id, &result).await;
        }
        result.map(Response::new)
    }

    async fn get_objective(
        &self,
        req: Request<pb::GetObjectiveRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req).ok();
        let id = self.resolve(who, &req.into_inner().id)?;
        let mut o = read_objective(&self.store, &id)?;
        // Ready steps held back by host pressure say why (the reason is live, not stored).
        let ready = pb::StepState::Ready as i32;
        if o.steps.iter().any(|s| s.state == ready) {
            // Best effort: a stopping engine does not fail the read.
            let held = match self.ask(|reply| Command::Status { reply }).await {
                Ok(live) => live.host_held,
                Err(_) => None,
            };
            if let Some(why) = held {
                for s in o.steps.iter_mut().filter(|s| s.state == ready) {
                    s.message = if s.message.is_empty() {
                        why.clone()
                    } else {
                        format!("{}; {why}", s.message)
                    };
                }
            }
        }
        Ok(Response::new(o))
    }

    async fn list_objectives(
        &self,
        req: Request<pb::ListObjectivesRequest>,
    ) -> Result<Response<pb::ListObjectivesResponse>, Status> {
        let req = req.into_inner();
        let state = state_filter(req.state)?;
        let objectives = self
            .store
            .list(state, req.limit as usize)
            .map_err(store_status)?;
        let mut out = Vec::with_capacity(objectives.len());
        for o in &objectives {
            let steps = self.store.steps(&o.id).map_err(store_status)?;
            out.push(summary_pb(o, &steps));
        }
        Ok(Response::new(pb::ListObjectivesResponse {
            objectives: out,
        }))
    }

    async fn cancel(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        self.control(req, "cancel", |id, caller, reply| Command::Cancel {
            id,
            caller,
            reply,
        })
        .await
    }

    async fn pause(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        self.control(req, "pause", |id, caller, reply| Command::Pause {
            id,
            caller,
            reply,
        })
        .await
    }

    async fn resume(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::Objective>, Status> {
        self.control(req, "resume", |id, caller, reply| Command::Resume {
            id,
            caller,
            reply,
        })
        .await
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let resolved = self.resolve(Some(who), &r.id);
        let result = async {
            let id = resolved.clone()?;
            let step = (!r.step_id.trim().is_empty()).then(|| r.step_id.trim().to_string());
            self.ask(|reply| Command::Retry {
                id: id.clone(),
                step,
                fresh: r.fresh,
                caller: who,
                reply,
            })
            .await?
            .map_err(engine_status)?;
            read_objective(&self.store, &id)
        }
        .await;
        let audited = resolved.unwrap_or_else(|_| r.id.trim().to_string());
        self.audit(who, "retry", &audited, &result).await;
        result.map(Response::new)
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Objective>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let action = if r.approve { "approve" } else { "deny" };
        let resolved = self.resolve(Some(who), &r.id);
        let result = async {
            let id = resolved.clone()?;
            if r.step_id.trim().is_empty() {
                return Err(Status::invalid_argument(
                    "step_id: missing (the step waiting for approval)",
                ));
            }
            self.ask(|reply| Command::Approve {
                id: id.clone(),
                step: r.step_id.trim().to_string(),
                approve: r.approve,
                reason: r.reason.clone(),
                caller: who,
                reply,
            })
            .await?
            .map_err(engine_status)?;
            read_objective(&self.store, &id)
        }
        .await;
        let audited = resolved.unwrap_or_else(|_| r.id.trim().to_string());
        self.audit(who, action, &audited, &result).await;
        result.map(Response::new)
    }

    type WatchStream = BoxStream<pb::Event>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // What the client may leave unread (set by the admission layer for every call
        // that came through the socket).
        let quota = req
            .extensions()
            .get::<WatchQuota>()
            .cloned()
            .unwrap_or_else(|| WatchQuota::standalone(caller(&req).map_or(0, |c| c.uid)));
        let who = caller(&req).ok();
        let mut req = req.into_inner();
        if !req.objective_id.trim().is_empty() {
            req.objective_id = self.resolve(who, &req.objective_id)?;
        }
        watch::open(self, req, quota).map(Response::new)
    }

    type StreamLogsStream = BoxStream<pb::LogChunk>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let who = caller(&req).ok();
        let mut req = req.into_inner();
        req.id = self.resolve(who, &req.id)?;
        logs::open(self, req).map(Response::new)
    }

    async fn list_agents(
        &self,
        _req: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let cfg = self.config.borrow().clone();
        let views = self.ask(|reply| Command::AgentViews { reply }).await?;
        let agents = cfg
            .agents
            .keys()
            .map(|name| {
                let view = views.iter().find(|v| &v.name == name);
                super::routing::agent_pb(&cfg, name, view)
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::UsageReport>, Status> {
        let who = caller(&req)?;
        let mut id = req.into_inner().objective_id;
        if !id.trim().is_empty() {
            id = self.resolve(Some(who), &id)?;
        }
        let cfg = self.config.borrow().clone();
        let (day_key, month_key) = crate::model::usage_keys(chrono::Utc::now());
        let total = |key: &str| self.store.usage_total(key).map_err(store_status);
        let mine = |key: &str| total(&crate::model::user_usage_key(who.uid, key));
        let (today, month) = (mine(&day_key)?, mine(&month_key)?);
        let limits = cfg.user_limits(who.uid, crate::sys::user_name(who.uid).as_deref());
        let percent = |used: f64, limit: f64| {
            if limit > 0.0 {
                used / limit * 100.0
            } else {
                100.0
            }
        };
        let mut report = pb::UsageReport {
            today: Some(usage_pb(&today)),
            this_month: Some(usage_pb(&month)),
            daily_budget_usd: limits.daily_usd,
            monthly_budget_usd: limits.monthly_usd,
            machine_today: Some(usage_pb(&total(&day_key)?)),
            machine_this_month: Some(usage_pb(&total(&month_key)?)),
            machine_daily_budget_usd: cfg.budget.machine_daily_usd,
            machine_monthly_budget_usd: cfg.budget.machine_monthly_usd,
            uid: who.uid,
            ..Default::default()
        };
        if id.trim().is_empty() {
            report.usage = Some(usage_pb(&mine("total")?));
            // In total, the caller's tightest budget applies.
            if let Some(d) = limits.daily_usd {
                report.budget_usd = Some(d);
                report.budget_used_percent = Some(percent(today.cost_usd, d));
            } else if let Some(m) = limits.monthly_usd {
                report.budget_usd = Some(m);
                report.budget_used_percent = Some(percent(month.cost_usd, m));
            }
        } else {
            let o = self
                .store
                .objective(id.trim())
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("no objective with id `{}`", id.trim()))
                })?;
            report.usage = Some(usage_pb(&o.usage));
            report.max_tokens = o.budget.max_tokens;
            if let Some(b) = o.budget.max_cost_usd {
                report.budget_usd = Some(b);
                report.budget_used_percent = Some(percent(o.usage.cost_usd, b));
            }
        }
        Ok(Response::new(report))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let who = caller(&req).ok();
        let mut req = req.into_inner();
        if !req.objective_id.trim().is_empty() {
            // A removed objective's entries stay: its full id is taken as it is.
            match self.resolve(who, &req.objective_id) {
                Ok(id) => req.objective_id = id,
                Err(s) if s.code() == tonic::Code::NotFound => {
                    req.objective_id = req.objective_id.trim().to_ascii_uppercase();
                }
                Err(s) => return Err(s),
            }
        }
        let objective = (!req.objective_id.is_empty()).then_some(req.objective_id.as_str());
        let entries = self
            .store
            .audit(objective, req.limit as usize)
            .map_err(store_status)?
            .into_iter()
            .map(|e| pb::AuditEntry {
                time: ts(e.time_ms),
                uid: e.uid,
                gid: e.gid,
                pid: e.pid,
                action: e.action,
                objective_id: e.objective_id,
                result: e.result,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn daemon_status(
        &self,
        _req: Request<pb::DaemonStatusRequest>,
    ) -> Result<Response<pb::DaemonStatusResponse>, Status> {
        let live = self.ask(|reply| Command::Status { reply }).await?;
        // While the store is being reopened (after a full disk) the counts are unknown.
        let counts = self
            .store
            .counts()
            .unwrap_or_default()
            .into_iter()
            .map(|(s, n)| (s.word().to_string(), n))
            .collect();
        let info = &self.info;
        let executors = info
            .executors
            .health()
            .await
            .into_iter()
            .map(|h| pb::ExecutorStatus {
                name: h.name.to_string(),
                healthy: h.healthy,
                detail: h.detail,
            })
            .collect();
        let space = info.disk.space().ok();
        Ok(Response::new(pb::DaemonStatusResponse {
            executors,
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uid: crate::sys::effective_uid(),
            socket_activated: info.socket_activated,
            uptime_s: info.started.elapsed().as_secs(),
            daemon_started_ms: info.started_ms,
            socket: info.socket.display().to_string(),
            state_dir: info.state_dir.display().to_string(),
            store_bytes: self.store.size_on_disk(),
            limits_backend: info.limits_backend.clone(),
            counts,
            max_parallel: live.max_parallel,
            running_attempts: live.running_attempts,
            config_path: info.config_path.display().to_string(),
            limits_detail: info.limits_detail.clone(),
            last_event_seq: live.last_seq,
            host: Some(super::reports::host_status(
                &self.config.borrow().clone(),
                live.host_held,
            )),
            config_found: info.config_path.exists(),
            state_disk_free_bytes: space.map_or(0, |s| s.free),
            state_disk_total_bytes: space.map_or(0, |s| s.total),
            min_free_bytes: info.disk.min_free(),
            store_problem: info.disk.store_problem().unwrap_or_default(),
        }))
    }

    async fn reload_config(
        &self,
        req: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let who = caller(&req)?;
        let own = crate::sys::effective_uid();
        let result = if who.uid != 0 && who.uid != own {
            tracing::warn!(uid = who.uid, pid = who.pid, "refused a config reload");
            Err(Status::permission_denied(format!(
                "uid {} may not reload the config (only root or orchd's own user, uid {own})",
                who.uid
            )))
        } else {
            self.reloader
                .reload()
                .await
                .map(|path| pb::ReloadConfigResponse {
                    config_path: path.display().to_string(),
                })
                .map_err(|e| {
                    Status::failed_precondition(format!("{e}; the running config is kept"))
                })
        };
        self.audit(who, "reload", "", &result).await;
        result.map(Response::new)
    }

    async fn upgrade_daemon(
        &self,
        req: Request<pb::UpgradeDaemonRequest>,
    ) -> Result<Response<pb::UpgradeDaemonResponse>, Status> {
        let who = caller(&req)?;
        let own = crate::sys::effective_uid();
        let result = if who.uid != 0 && who.uid != own {
            tracing::warn!(uid = who.uid, pid = who.pid, "refused a daemon upgrade");
            Err(Status::permission_denied(format!(
                "uid {} may not upgrade the daemon (only root or orchd's own user, uid {own})",
                who.uid
            )))
        } else {
            let up = &self.info.upgrade;
            match up.check().await {
                Ok(new_version) => {
                    let live = self.ask(|reply| Command::Status { reply }).await?;
                    tracing::info!(binary = %up.exe.display(), new_version = %new_version, "upgrade: re-executing orchd");
                    Ok(pb::UpgradeDaemonResponse {
                        binary: up.exe.display().to_string(),
                        new_version,
                        old_version: format!("orchd {}", env!("CARGO_PKG_VERSION")),
                        pid: std::process::id(),
                        daemon_started_ms: self.info.started_ms,
                        attempts_kept: if self.info.executors.live_restore {
                            live.running_attempts
                        } else {
                            0
                        },
                    })
                }
                Err(e) => Err(Status::failed_precondition(format!(
                    "{e}; the running daemon is kept"
                ))),
            }
        };
        self.audit(who, "upgrade", "", &result).await;
        if result.is_ok() {
            self.info.upgrade.request();
        }
        result.map(Response::new)
    }

    async fn get_stats(
        &self,
        _req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let stats = self.ask(|reply| Command::Stats { reply }).await?;
        Ok(Response::new(super::reports::stats_pb(&stats)))
    }

    async fn get_usage_breakdown(
        &self,
        req: Request<pb::UsageBreakdownRequest>,
    ) -> Result<Response<pb::UsageBreakdown>, Status> {
        let who = caller(&req)?;
        let req = req.into_inner();
        let everyone = who.uid == 0 || who.uid == crate::sys::effective_uid();
        let store = self.store.clone();
        // Reads the usage events of the period: off the async threads.
        tokio::task::spawn_blocking(move || {
            super::reports::usage_breakdown(&store, who, everyone, &req.by, req.since_ms)
        })
        .await
        .map_err(|e| Status::internal(format!("usage report: {e}")))?
        .map(Response::new)
    }

    async fn get_config(
        &self,
        _req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let cfg = self.config.borrow().clone();
        let (path, flags) = (&self.reloader.path, &self.reloader.overrides);
        Ok(Response::new(super::reports::config_report(
            &cfg, path, flags,
        )))
    }

    async fn remove(
        &self,
        req: Request<pb::ObjectiveRef>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.remove_call(req).await
    }

    async fn prune(
        &self,
        req: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::RemoveResponse>, Status> {
        self.prune_call(req).await
    }

    async fn disable_agent(
        &self,
        req: Request<pb::DisableAgentRequest>,
    ) -> Result<Response<pb::AgentProfile>, Status> {
        let who = caller(&req)?;
        let r = req.into_inner();
        self.switch_agent_call(who, r.name, false, r.for_ms, r.reason)
            .await
            .map(Response::new)
    }

    async fn enable_agent(
        &self,
        req: Request<pb::EnableAgentRequest>,
    ) -> Result<Response<pb::AgentProfile>, Status> {
        let who = caller(&req)?;
        let name = req.into_inner().name;
        self.switch_agent_call(who, name, true, 0, String::new())
            .await
            .map(Response::new)
    }

    async fn list_tool_servers(
        &self,
        req: Request<pb::ListToolServersRequest>,
    ) -> Result<Response<pb::ListToolServersResponse>, Status> {
        let who = super::caller(&req)?;
        // A shared daemon's tool-server secrets are for root and the daemon's own user; the
        // other members of group `orch` see which variables are set, not their values.
        let trusted = who.uid == 0 || who.uid == nix::unistd::geteuid().as_raw();
        let cfg = self.config.borrow().clone();
        let servers = cfg
            .mcp
            .iter()
            .map(|(name, s)| pb::ToolServer {
                name: name.clone(),
                command: s.command.clone(),
                env: super::reports::tool_server_env(&s.env, trusted),
                url: s.url.clone().unwrap_or_default(),
            })
            .collect();
        let agents = cfg
            .agents
            .iter()
            .map(|(name, p)| pb::AgentTools {
                agent: name.clone(),
                servers: p.mcp.clone(),
                mcp_self: p.mcp_self,
            })
            .collect();
        Ok(Response::new(pb::ListToolServersResponse {
            servers,
            agents,
        }))
    }
}
