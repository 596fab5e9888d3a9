//! The gRPC API from the socket alone: health, Orchestrator calls and their status codes,
//! server reflection, and the Python example client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use orch_proto::v1::orchestrator_client::OrchestratorClient;
use orch_proto::v1::{
    GetObjectiveRequest, ListObjectivesRequest, ObjectiveSpec, ObjectiveState, StepSpec,
    SubmitRequest,
};
use prost::Message;
use serde_json::Value;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{
    STATE_DEADLINE, TestDaemon, command_step, describe, health, is_terminal, objective_until,
    require_python_grpc, run_deadline, stdout, submit_request,
};

fn request(d: &TestDaemon, spec: Option<ObjectiveSpec>) -> SubmitRequest {
    submit_request(d.work_dir(), spec)
}

/// Submits `spec`, which must be refused as INVALID_ARGUMENT (`why`: why it must); returns
/// the refusal's message.
async fn refused(
    client: &mut OrchestratorClient<Channel>,
    d: &TestDaemon,
    spec: Option<ObjectiveSpec>,
    why: &str,
) -> String {
    let err = client.submit(request(d, spec)).await.expect_err(why);
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    err.message().to_string()
}

#[tokio::test]
async fn health_reports_serving() {
    let d = TestDaemon::start();
    assert_eq!(health(d.socket()).await, Ok(ServingStatus::Serving));
}

#[tokio::test]
async fn orchestrator_calls_and_status_codes() {
    let d = TestDaemon::start();
    let mut client = d.client().await;

    let spec = ObjectiveSpec {
        name: "over-grpc".into(),
        steps: vec![command_step("only", &["true"])],
        ..Default::default()
    };
    let reply = client
        .submit(request(&d, Some(spec)))
        .await
        .expect("Submit of a valid spec")
        .into_inner();
    assert!(
        ulid::Ulid::from_string(&reply.id).is_ok(),
        "id `{}` is not a ULID",
        reply.id
    );
    assert!(!reply.existing);
    let plan = reply.plan.expect("SubmitResponse.plan is always set");
    assert_eq!(plan.steps.len(), 1);
    assert_eq!(plan.steps[0].id, "only");

    // Followed over Watch (bounded) until it ends.
    let done = objective_until(
        &mut client,
        &reply.id,
        "its end",
        STATE_DEADLINE,
        is_terminal,
    )
    .await;
    assert_eq!(done.state(), ObjectiveState::Succeeded, "{done:?}");
    assert_eq!(done.name, "over-grpc");
    assert_eq!(done.steps.len(), 1);
    assert_eq!(done.steps[0].attempts.len(), 1);

    let unknown = ulid::Ulid::generate().to_string();
    let err = client
        .get_objective(GetObjectiveRequest {
            id: unknown.clone(),
        })
        .await
        .expect_err("GetObjective of an unknown id must fail");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Invalid specs: INVALID_ARGUMENT naming the field, and nothing stored.
    let dup = ObjectiveSpec {
        name: "dup".into(),
        steps: vec![command_step("a", &["true"]), command_step("a", &["true"])],
        ..Default::default()
    };
    let msg = refused(
        &mut client,
        &d,
        Some(dup),
        "duplicate step ids must be refused",
    )
    .await;
    assert!(
        msg.contains("steps[") && msg.contains(".id") && msg.contains("duplicate"),
        "the message does not name the field: {msg:?}"
    );
    let no_steps = ObjectiveSpec {
        name: "empty".into(),
        ..Default::default()
    };
    let why = "a spec without steps must be refused";
    let msg = refused(&mut client, &d, Some(no_steps), why).await;
    assert!(msg.contains("steps"), "{msg:?}");
    refused(
        &mut client,
        &d,
        None,
        "a request without a spec must be refused",
    )
    .await;
    let unknown_agent = ObjectiveSpec {
        name: "agentless".into(),
        steps: vec![StepSpec {
            id: "a".into(),
            agent: "no-such-agent".into(),
            prompt: "hello".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let why = "an unknown agent must be refused";
    let msg = refused(&mut client, &d, Some(unknown_agent), why).await;
    assert!(msg.contains("no-such-agent"), "{msg:?}");

    let listed = client
        .list_objectives(ListObjectivesRequest::default())
        .await
        .expect("ListObjectives")
        .into_inner()
        .objectives;
    let ids: Vec<&str> = listed.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(
        ids,
        [reply.id.as_str()],
        "only the valid objective is stored"
    );
    assert_eq!(listed[0].state(), ObjectiveState::Succeeded);
}

/// The services listed by reflection, and the descriptor file that defines `symbol`, over
/// reflection `v1` (falling back to `v1alpha`, which older clients use).
async fn reflect(socket: &Path, symbol: &str) -> (Vec<String>, Vec<Vec<u8>>) {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = orch_proto::channel(socket).await.expect("channel");
    let mut c = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let reqs = vec![
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(symbol.into()),
            ),
        },
    ];
    match c.server_reflection_info(tokio_stream::iter(reqs)).await {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            let (mut services, mut files) = (Vec::new(), Vec::new());
            while let Some(m) = stream.message().await.expect("reflection v1 response") {
                match m.message_response {
                    Some(
                        v1::server_reflection_response::MessageResponse::ListServicesResponse(l),
                    ) => {
                        services.extend(l.service.into_iter().map(|s| s.name));
                    }
                    Some(
                        v1::server_reflection_response::MessageResponse::FileDescriptorResponse(f),
                    ) => {
                        files.extend(f.file_descriptor_proto);
                    }
                    other => panic!("unexpected reflection v1 answer: {other:?}"),
                }
            }
            (services, files)
        }
        Err(e) if e.code() == Code::Unimplemented => {
            let mut c = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
            let reqs = vec![
                v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        v1alpha::server_reflection_request::MessageRequest::ListServices(
                            String::new(),
                        ),
                    ),
                },
                v1alpha::ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(
                        v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                            symbol.into(),
                        ),
                    ),
                },
            ];
            let mut stream = c
                .server_reflection_info(tokio_stream::iter(reqs))
                .await
                .expect("neither reflection v1 nor v1alpha is served")
                .into_inner();
            let (mut services, mut files) = (Vec::new(), Vec::new());
            while let Some(m) = stream.message().await.expect("reflection v1alpha response") {
                match m.message_response {
                    Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
                        services.extend(l.service.into_iter().map(|s| s.name));
                    }
                    Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
                        f,
                    )) => files.extend(f.file_descriptor_proto),
                    other => panic!("unexpected reflection v1alpha answer: {other:?}"),
                }
            }
            (services, files)
        }
        Err(e) => panic!("reflection v1: {e:?}"),
    }
}

#[tokio::test]
async fn reflection_describes_the_api() {
    let d = TestDaemon::start();
    let (services, files) = reflect(d.socket(), "orch.v1.Orchestrator").await;
    for wanted in ["orch.v1.Orchestrator", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == wanted),
            "reflection does not list {wanted}: {services:?}"
        );
    }
    let described = files.iter().any(|bytes| {
        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
            .expect("a FileDescriptorProto");
        file.package() == "orch.v1" && file.service.iter().any(|s| s.name() == "Orchestrator")
    });
    assert!(
        described,
        "reflection gave no descriptor defining orch.v1.Orchestrator"
    );
}

/// Every string inside a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
}

#[test]
fn python_example_client_works() {
    if !require_python_grpc() {
        return;
    }
    let d = TestDaemon::start();
    let id = d.submit(&["--wait", "--name", "for-python", "--", "true"], 0);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/orch_client.py");
    assert!(script.exists(), "{} is missing", script.display());
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(d.socket())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    let out = run_deadline(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));

    let mut all = Vec::new();
    for line in stdout(&out).lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "line is not one JSON object ({e}): {line}\n{}",
                describe(&out)
            )
        });
        assert!(v.is_object(), "line is not a JSON object: {line}");
        strings(&v, &mut all);
    }
    assert!(
        all.iter().any(|s| s == "SERVING"),
        "the client did not report SERVING\n{}",
        describe(&out)
    );
    assert!(
        all.iter().any(|s| s == &id),
        "the client did not list objective {id}\n{}",
        describe(&out)
    );

    // Its Submit works too: the objective it reports runs to success.
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(d.socket())
        .args(["--submit", "--", "echo", "from-python"])
        .current_dir(d.work_dir());
    let out = run_deadline(&mut cmd, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "{}", describe(&out));
    let submitted = stdout(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["type"] == "submitted")
        .unwrap_or_else(|| panic!("no `submitted` line\n{}", describe(&out)));
    let py_id = submitted["id"]
        .as_str()
        .unwrap_or_else(|| panic!("`submitted` has no id: {submitted}"));
    let v = d.wait_ended(py_id, STATE_DEADLINE);
    assert_eq!(v["state"], "succeeded", "{v}");
}
