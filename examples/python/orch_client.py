#!/usr/bin/env python3
"""A small orch client in Python: gRPC over orchd's Unix socket.

Usage:
    orch_client.py [SOCKET] [--limit N]              list objectives (default mode)
    orch_client.py [SOCKET] --submit [--] CMD ARG...  submit a one-step objective
    orch_client.py [SOCKET] --plan FILE [--dry-run]   submit a plan file (TOML, YAML or JSON)
    orch_client.py [SOCKET] --watch ID [--from SEQ]   follow an objective's events

SOCKET defaults to $ORCH_SOCKET, then to orchd's default socket path
($XDG_RUNTIME_DIR/orch/orchd.sock, /tmp/orch-$UID/orchd.sock without
XDG_RUNTIME_DIR, /run/orch/orchd.sock for root).

Requirements: `pip install -r examples/python/requirements.txt`. The Python
stubs for proto/orch/v1/orch.proto are generated on first use with
`python -m grpc_tools.protoc` into examples/python/orch/v1/ (git-ignored), or
into a temporary directory when that is not writable. Set ORCH_PROTO_DIR to
use another proto directory.

Output: one JSON object per line on stdout, each with a "type" field:

    {"type": "health", "status": "SERVING"}                 always first (service orch.v1.Orchestrator)
    {"type": "objective", "objective": {...}}               list: one per objective, newest first
    {"type": "done", "objectives": N}                       list: last line
    {"type": "submitted", "id": "...", "existing": false}   --submit
    {"type": "submitted", "id": "...", "existing": false,
     "plan": {...}}                                         --plan (id "" with --dry-run)
    {"type": "event", "event": {...}}                       --watch: one per event
    {"type": "watch_end", "reason": "end" | "unimplemented",
     "state": "OBJECTIVE_STATE_SUCCEEDED"}                  --watch: last line (state: how it ended)
    {"type": "error", "code": "...", "message": "..."}      on failure, last line

Messages ("objective", "event") use the canonical proto3 JSON mapping with
the .proto field names: enums are names such as "OBJECTIVE_STATE_SUCCEEDED",
64-bit integers (e.g. an event's "seq") are strings, timestamps RFC 3339.

Exit status: 0 on success, 1 when a call failed or the daemon is not
SERVING, 2 for bad usage, 3 when the daemon cannot be reached.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import grpc
from google.protobuf import json_format

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.environ.get("ORCH_PROTO_DIR") or os.path.join(HERE, "..", "..", "proto")
PROTO_FILE = os.path.join("orch", "v1", "orch.proto")


class Failure(Exception):
    """A failure to report as the last output line."""

    def __init__(self, code, message, exit_code=1):
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code


def emit(obj):
    print(json.dumps(obj, sort_keys=True), flush=True)


def to_json(message):
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


# ------------------------------------------------------------------ stubs


def _generate(out_dir):
    """Runs grpc_tools.protoc for orch.proto into out_dir."""
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", PROTO_DIR,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        PROTO_FILE,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise Failure("STUBS", "grpc_tools.protoc failed: " + done.stderr.strip(), 1)


def load_stubs():
    """Imports orch_pb2 / orch_pb2_grpc, generating them if missing or older than the proto."""
    proto = os.path.join(PROTO_DIR, PROTO_FILE)
    if not os.path.exists(proto):
        raise Failure("STUBS", "cannot find %s (set ORCH_PROTO_DIR)" % proto, 1)
    gen_dir = HERE
    target = os.path.join(gen_dir, "orch", "v1")
    names = ("orch_pb2.py", "orch_pb2_grpc.py")
    fresh = all(
        os.path.exists(os.path.join(target, n))
        and os.path.getmtime(os.path.join(target, n)) >= os.path.getmtime(proto)
        for n in names
    )
    if not fresh:
        try:
            # Generate beside the target, then rename into place, so that
            # several clients starting at once never see a half-written file.
            tmp = tempfile.mkdtemp(prefix=".gen-", dir=gen_dir)
            try:
                _generate(tmp)
                os.makedirs(target, exist_ok=True)
                for n in names:
                    os.replace(os.path.join(tmp, "orch", "v1", n), os.path.join(target, n))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            # Read-only checkout: use a private temporary directory instead.
            gen_dir = tempfile.mkdtemp(prefix="orch-py-")
            _generate(gen_dir)
    sys.path.insert(0, gen_dir)
    from orch.v1 import orch_pb2, orch_pb2_grpc  # noqa: E402  (generated)

    return orch_pb2, orch_pb2_grpc


# ------------------------------------------------------------------ connection


def default_socket():
    if os.geteuid() == 0:
        return "/run/orch/orchd.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "orch", "orchd.sock")
    return "/tmp/orch-%d/orchd.sock" % os.geteuid()


def connect(socket_path, timeout):
    # orchd serves HTTP/2 on a Unix socket and expects the authority
    # "localhost"; grpc-python would otherwise send the socket path.
    channel = grpc.insecure_channel(
        "unix://" + os.path.abspath(socket_path),
        options=[("grpc.default_authority", "localhost")],
    )
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        channel.close()
        raise Failure(
            "UNREACHABLE",
            "cannot reach orchd at %s (start it with `orchd`, or pass the socket path)" % socket_path,
            3,
        )
    return channel


def check_health(channel, service, timeout):
    """grpc.health.v1.Health/Check; returns the status name."""
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        health_pb2 = None
    if health_pb2 is not None:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    # Without grpcio-health-checking: a generic call with hand-encoded messages
    # (HealthCheckRequest{1: service}, HealthCheckResponse{1: status enum}).
    raw = service.encode()
    request = (b"\x0a" + bytes([len(raw)]) + raw) if raw else b""
    call = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    reply = call(request, timeout=timeout)
    status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
    return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}.get(status, str(status))


# ------------------------------------------------------------------ modes


def list_objectives(pb, stub, limit, timeout):
    reply = stub.ListObjectives(pb.ListObjectivesRequest(limit=limit), timeout=timeout)
    for summary in reply.objectives:
        objective = stub.GetObjective(pb.GetObjectiveRequest(id=summary.id), timeout=timeout)
        emit({"type": "objective", "objective": to_json(objective)})
    emit({"type": "done", "objectives": len(reply.objectives)})


def submit(pb, stub, command, timeout):
    spec = pb.ObjectiveSpec(
        name=os.path.basename(command[0]) or "command",
        steps=[pb.StepSpec(id="main", command=command)],
    )
    request = pb.SubmitRequest(spec=spec, workdir=os.getcwd(), env=dict(os.environ))
    reply = stub.Submit(request, timeout=timeout)
    emit({"type": "submitted", "id": reply.id, "existing": reply.existing})


def submit_plan(pb, stub, path, dry_run, timeout):
    """Sends a plan file's text; orchd parses and resolves it exactly as
    `orchctl submit FILE` would (units, the default name from the file name,
    step workdirs relative to the workdir sent), so no plan parser is needed
    here. The format comes from the file's extension (plan_format can say it
    instead)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    request = pb.SubmitRequest(
        plan_text=text,
        plan_file=os.path.basename(path),
        workdir=os.getcwd(),
        env=dict(os.environ),
        dry_run=dry_run,
    )
    reply = stub.Submit(request, timeout=timeout)
    emit({"type": "submitted", "id": reply.id, "existing": reply.existing,
          "plan": to_json(reply.plan)})


def watch(pb, stub, objective_id, from_seq, deadline):
    """Prints the objective's events from from_seq (0: its first) until it ends.

    WatchRequest.from_seq is a proto3 optional field: this client always sets
    it, and a set value (0 included) is where the stream starts. Left unset, a
    watch without objective_id would be live only.

    orchd ends the stream after the objective's final objective_state event.
    Should a stream close before that event came (a watch opened at the very
    moment the objective ended can stop short), it is opened once more after
    the last event seen; nothing more confirms the end. Every event is
    printed exactly once.
    """
    terminal = {
        pb.OBJECTIVE_STATE_SUCCEEDED,
        pb.OBJECTIVE_STATE_FAILED,
        pb.OBJECTIVE_STATE_CANCELLED,
    }
    end_at = time.monotonic() + deadline
    next_seq = from_seq
    final = None
    rechecked = False
    while True:
        request = pb.WatchRequest(objective_id=objective_id, from_seq=next_seq)
        got = False
        try:
            timeout = max(end_at - time.monotonic(), 0.1)
            for event in stub.Watch(request, timeout=timeout):
                if next_seq and event.seq < next_seq:
                    continue
                next_seq = event.seq + 1
                got = True
                emit({"type": "event", "event": to_json(event)})
                if event.WhichOneof("payload") == "objective_state":
                    state = event.objective_state.state
                    final = state if state in terminal else None
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                emit({"type": "watch_end", "reason": "unimplemented"})
                return
            raise
        if final is not None or (rechecked and not got):
            break
        rechecked = True
        time.sleep(0.1)
    end = {"type": "watch_end", "reason": "end"}
    if final is not None:
        end["state"] = pb.ObjectiveState.Name(final)
    emit(end)


# ------------------------------------------------------------------ main


def parse_args(argv):
    command = None
    if "--submit" in argv:
        i = argv.index("--submit")
        argv, command = argv[:i], argv[i + 1:]
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            print("orch_client.py: --submit needs a command", file=sys.stderr)
            sys.exit(2)
    p = argparse.ArgumentParser(
        description="Example orch client (see the top of this file for the output format).")
    p.add_argument("socket", nargs="?", help="orchd socket (default: $ORCH_SOCKET or the default path)")
    p.add_argument("--watch", metavar="ID", help="follow this objective's events until it ends")
    p.add_argument("--plan", metavar="FILE", help="submit this plan file (.toml, .yaml, .yml, .json)")
    p.add_argument("--dry-run", action="store_true", help="with --plan: resolve only, store nothing")
    p.add_argument("--from", dest="from_seq", type=int, default=0, metavar="SEQ",
                   help="with --watch: first event sequence number (0: the objective's first event)")
    p.add_argument("--limit", type=int, default=0, help="list at most N objectives (0: all)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    p.add_argument("--deadline", type=float, default=600.0,
                   help="seconds a --watch may last in all (default 600)")
    p.add_argument("--health-service", default="orch.v1.Orchestrator",
                   help='service name for the health check (default: orch.v1.Orchestrator; "" = the whole server)')
    args = p.parse_args(argv)
    if sum(x is not None for x in (command, args.watch, args.plan)) > 1:
        p.error("--submit, --plan and --watch cannot be combined")
    args.command = command
    return args


def main(argv):
    args = parse_args(argv)
    socket_path = args.socket or os.environ.get("ORCH_SOCKET") or default_socket()
    channel = None
    try:
        pb, pb_grpc = load_stubs()
        channel = connect(socket_path, args.timeout)
        status = check_health(channel, args.health_service, args.timeout)
        emit({"type": "health", "status": status})
        if status != "SERVING":
            raise Failure("NOT_SERVING", "orchd health is %s" % status, 1)
        stub = pb_grpc.OrchestratorStub(channel)
        if args.command is not None:
            submit(pb, stub, args.command, args.timeout)
        elif args.plan:
            submit_plan(pb, stub, args.plan, args.dry_run, args.timeout)
        elif args.watch:
            watch(pb, stub, args.watch, args.from_seq, args.deadline)
        else:
            list_objectives(pb, stub, args.limit, args.timeout)
        return 0
    except grpc.RpcError as e:
        code = e.code()
        exit_code = 3 if code == grpc.StatusCode.UNAVAILABLE else 1
        name = code.name if code else "UNKNOWN"
        failure = Failure(name, e.details() or "call failed with %s" % name, exit_code)
    except Failure as f:
        failure = f
    finally:
        if channel is not None:
            channel.close()
    emit({"type": "error", "code": failure.code, "message": failure.message})
    print("orch_client.py: %s" % failure.message, file=sys.stderr)
    return failure.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
